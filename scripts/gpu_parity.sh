#!/usr/bin/env bash
# One-shot device parity run for a machine with a CUDA GPU (see docs/parity.md).
#
#   scripts/gpu_parity.sh [OUTPUT_DIR]
#
# Runs the parity checks (CUDA against CPU in float64, float32 against float64) for kfac_ref,
# then for the curvlinops adapter when curvlinops is installed, then the scale profile
# (probe products on models of millions of parameters, docs/performance.md) for kfac_ref on
# CUDA, writing one JSON report per run to OUTPUT_DIR (default: $OUT when set, else ./gpu-parity). The exit code is the
# worst of the runs: 0 all passed, 1 a check failed or errored, 2 no CUDA or a usage error.
set -uo pipefail

cd "$(dirname "$0")/.."
output="${1:-${OUT:-gpu-parity}}"
mkdir -p "$output"
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python; fi
kfac_conformance=("$python" -m kfac_conformance.frontends.cli)

"$python" - <<'PY' | tee "$output/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
PY
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: CUDA is not available; this script needs a GPU machine" >&2
    exit 2
fi

worst=0
run() {  # run NAME SPEC
    local name="$1" spec="$2" code
    echo "== $name ($spec)"
    "${kfac_conformance[@]}" run --candidate "$spec" --select 'parity/*' --device cuda \
        --timeout 600 --report-json "$output/parity-$name.json" -q | tee "$output/parity-$name.txt"
    code=${PIPESTATUS[0]}
    echo "== $name: exit code $code"
    if [ "$code" -gt "$worst" ]; then worst=$code; fi
}

run kfac_ref kfac_ref
echo "== scale profile on CUDA (kfac_ref)"
"${kfac_conformance[@]}" run --candidate kfac_ref --profile scale --device cuda --timeout 600 \
    --report-json "$output/scale-kfac_ref.json" -q | tee "$output/scale-kfac_ref.txt"
code=${PIPESTATUS[0]}
echo "== scale profile: exit code $code"
if [ "$code" -gt "$worst" ]; then worst=$code; fi
if "$python" -c "import curvlinops" 2>/dev/null; then
    run curvlinops kfac_conformance.adapters.curvlinops:CurvlinopsCandidate
else
    echo "== curvlinops is not installed: its parity run is skipped" | tee "$output/curvlinops-skipped.txt"
fi
exit "$worst"
