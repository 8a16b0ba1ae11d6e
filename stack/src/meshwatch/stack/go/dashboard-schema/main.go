// dashboard-schema checks Grafana dashboard JSON files against Grafana's own schema, as
// published in grafana-foundation-sdk (Dashboard.UnmarshalJSONStrict with the SDK's panel and
// query plugins registered): a missing, mistyped or unknown field is reported with its path.
//
// Usage: dashboard-schema FILE.json...   (exit 0: all valid; 1: problems printed; 2: usage)
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-schema FILE.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		raw, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("%s: %v\n", path, err)
			failed = true
			continue
		}
		var board dashboard.Dashboard
		if problems := strictProblems(board.UnmarshalJSONStrict(raw)); len(problems) > 0 {
			for _, problem := range problems {
				fmt.Printf("%s: %s\n", path, problem)
			}
			failed = true
			continue
		}
		fmt.Printf("%s: ok (%d panels)\n", path, len(board.Panels))
	}
	if failed {
		os.Exit(1)
	}
}

// strictProblems lists what UnmarshalJSONStrict found. The SDK returns an empty, non-nil
// cog.BuildErrors when it found nothing, so an error value alone does not mean a problem.
func strictProblems(err error) []string {
	if err == nil {
		return nil
	}
	var built cog.BuildErrors
	if !errors.As(err, &built) {
		return []string{err.Error()}
	}
	problems := make([]string, 0, len(built))
	for _, one := range built {
		problems = append(problems, one.Error())
	}
	return problems
}
