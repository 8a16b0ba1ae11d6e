#!/usr/bin/env bash
# The supported OpenTelemetry range (instrumentation/pyproject.toml) is what is tested: the
# instrumentation unit tests run once more on each end of it that .venv does not already have,
# each in its own venv (.venv-sdk-<version>, built once from constraints.txt with the
# OpenTelemetry pins replaced by that release's). Usage: sdk-range.sh PYTHON CORE=CONTRIB...
set -euo pipefail
python=$1; shift
pinned_core=$(sed -n 's/^opentelemetry-sdk==//p' constraints.txt)
pinned_contrib=$(sed -n 's/^opentelemetry-instrumentation==//p' constraints.txt)
for pair in "$@"; do
  core=${pair%=*}; contrib=${pair#*=}
  if [[ $core == "$pinned_core" ]]; then
    echo "==> opentelemetry-sdk $core is .venv's own: tested by the main suite"; continue
  fi
  venv=.venv-sdk-$core
  if [[ ! -f $venv/.installed || constraints.txt -nt $venv/.installed ]]; then
    echo "==> $venv: the instrumentation and test tools on opentelemetry-sdk $core / contrib $contrib"
    rm -rf "$venv"; "$python" -m venv "$venv"
    # Not every OpenTelemetry package has every release (no propagator-b3 1.45.2, no contrib
    # instrumentor but a few at 0.66b2): pin the SDK, the API and the instrumentation base, and
    # let pip choose the rest to match them (the SDK pins its semantic conventions itself).
    { grep -v '^opentelemetry-' constraints.txt
      printf '%s\n' "opentelemetry-api==$core" "opentelemetry-sdk==$core" "opentelemetry-instrumentation==$contrib"
    } > "$venv/constraints.txt"
    # opentelemetry-distro is the benchmark's reference, not a test dependency (and has no 0.66b2)
    grep -v '^opentelemetry-distro' requirements-dev.txt > "$venv/requirements.txt"
    "$venv/bin/pip" install --quiet --progress-bar off -e './instrumentation[all]' -e ./collector -e ./stack \
      -r "$venv/requirements.txt" -c "$venv/constraints.txt"
    touch "$venv/.installed"
  fi
  got=$("$venv/bin/python" -c 'from importlib.metadata import version as v; print(v("opentelemetry-sdk"), v("opentelemetry-instrumentation"))')
  [[ $got == "$core $contrib" ]] || { echo "$venv has opentelemetry $got, expected $core $contrib" >&2; exit 1; }
  echo "==> instrumentation unit tests on opentelemetry-sdk $core / contrib $contrib"
  "$venv/bin/pytest" tests/instrumentation -m "not integration and not e2e" -q -p no:cacheprovider
  # the fence's planted faults and forced fallback, and every export setting on every signal
  "$venv/bin/pytest" tests/instrumentation/test_sdk_fence.py tests/instrumentation/test_export_settings.py \
    -q -p no:cacheprovider
done
