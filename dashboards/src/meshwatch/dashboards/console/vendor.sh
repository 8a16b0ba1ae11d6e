#!/usr/bin/env bash
# Vendor the console's chart library from npm: uPlot, pinned. The output is committed
# (static/vendor/), so a fresh checkout needs no network; re-run this to change the version.
set -euo pipefail
UPLOT_VERSION="${UPLOT_VERSION:-1.6.32}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@${UPLOT_VERSION}" >/dev/null && tar xzf "uplot-${UPLOT_VERSION}.tgz")
mkdir -p "$out"
cp "$work/package/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$work/package/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$work/package/LICENSE" "$out/uPlot.LICENSE"
echo "uplot ${UPLOT_VERSION}" > "$out/VERSIONS"
ls -l "$out"
