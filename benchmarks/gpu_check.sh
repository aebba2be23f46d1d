#!/usr/bin/env bash
# GPU check without TensorRT: edgeseg's CUDA layer (cuda-python, pycuda where it builds) and
# the runtime's double-buffered stage with a CuPy kernel standing in for the engine
# (tests/test_gpu.py, marker `gpu`). Installs what it needs into a virtual environment,
# prints a summary and exits non-zero when a check fails or nothing could run.
#
#   bash benchmarks/gpu_check.sh
#
# Environment: GPU_VENV (default .venv-gpu; created with --system-site-packages so a
# preinstalled torch/CuPy is reused), PYTHON (default python3), OUT or GPU_CHECK_OUT (where
# gpu-junit.xml and gpu-report.json go; default /tmp/edgeseg-gpu-check), GPU_CHECK_BUDGET
# (seconds for the whole run, default 450: installs that would not fit are skipped).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
VENV=${GPU_VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-${GPU_CHECK_OUT:-/tmp/edgeseg-gpu-check}}
mkdir -p "$RESULTS"
NOTES=()

say() { printf '[gpu-check] %s\n' "$*"; }
note() { NOTES+=("$*"); say "$*"; }
die() { say "FAILED: $*"; exit 1; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# pip_install SECONDS WHAT...: one pip call, bounded in time; 0 when it worked
pip_install() {
    local limit=$1; shift
    local room; room=$(left)
    (( room < 30 )) && { note "no time left to install $*"; return 1; }
    (( limit > room - 20 )) && limit=$(( room - 20 ))
    timeout "$limit" "$VPY" -m pip install -q --disable-pip-version-check "$@" \
        >"$RESULTS/pip.log" 2>&1 && return 0
    say "pip install $* did not work (last lines of $RESULTS/pip.log):"
    tail -n 3 "$RESULTS/pip.log" | sed 's/^/    /'
    return 1
}
importable() { "$VPY" -c "import $1" >/dev/null 2>&1; }

# ---- the driver decides the CUDA major of every wheel
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver here"
GPU=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>&1) ||
    die "nvidia-smi cannot reach the GPU: $GPU"
CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
[[ -n "$CUDA_MAJOR" ]] || die "nvidia-smi shows no 'CUDA Version'"
(( CUDA_MAJOR >= 12 )) || die "driver supports CUDA $CUDA_MAJOR only; edgeseg needs 12 or 13"
(( CUDA_MAJOR > 13 )) && CUDA_MAJOR=13
say "GPU: $GPU; driver CUDA major $CUDA_MAJOR -> cuda-python $CUDA_MAJOR.x, cupy-cuda${CUDA_MAJOR}x"

# ---- environment
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv --system-site-packages "$VENV" || die "cannot create $VENV with $PYTHON"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info >= (3, 10)' || die "$VPY is older than 3.10"

if ! importable edgeseg.runtime.backends.tensorrt || ! importable pytest; then
    pip_install 180 numpy pyyaml tqdm pillow opencv-python-headless pytest ||
        note "could not install edgeseg's runtime dependencies"
    pip_install 120 --no-deps -e . || note "could not install edgeseg itself"
fi
importable edgeseg.runtime.backends.tensorrt ||
    die "edgeseg's runtime does not import in $VENV (see $RESULTS/pip.log)"
importable pytest || die "pytest is not installed in $VENV and pip could not install it"

NEXT=$(( CUDA_MAJOR + 1 ))
if ! "$VPY" -c "from cuda.bindings import runtime as r; e, n = r.cudaGetDeviceCount(); \
assert int(e) == 0 and n > 0" >/dev/null 2>&1; then
    pip_install 150 "cuda-python>=${CUDA_MAJOR}.0,<${NEXT}" ||
        note "cuda-python $CUDA_MAJOR.x is not installable here: its checks will skip"
fi
if ! "$VPY" -c "import cupy; cupy.cuda.runtime.getDeviceCount()" >/dev/null 2>&1; then
    pip_install 240 "cupy-cuda${CUDA_MAJOR}x[ctk]" || pip_install 180 "cupy-cuda${CUDA_MAJOR}x" ||
        note "CuPy is not installable here: the stream, graph and stage checks will skip"
fi
if ! importable pycuda.driver; then
    if (( $(left) > 240 )); then
        # pycuda is built from source against the CUDA toolkit's headers (as on JetPack)
        pip_install 150 pycuda ||
            note "pycuda did not build here (it needs the CUDA toolkit's headers, e.g." \
                "CUDA_ROOT=/usr/local/cuda): its checks skip"
    else
        note "pycuda skipped: not enough time left to build it"
    fi
fi

# ---- the checks
ROOM=$(( $(left) - 15 ))
(( ROOM > 60 )) || die "no time left for the checks ($(left) s)"
say "running tests/test_gpu.py (limit ${ROOM} s)"
rm -f "$RESULTS/gpu-report.json"
EDGESEG_GPU_REPORT="$RESULTS/gpu-report.json" timeout "$ROOM" "$VPY" -m pytest -m gpu \
    tests/test_gpu.py -v -rs -p no:cacheprovider --junitxml="$RESULTS/gpu-junit.xml"
STATUS=$?
(( STATUS == 124 )) && note "the checks ran past ${ROOM} s and were stopped"

# ---- summary
"$VPY" - "$RESULTS" "$STATUS" "$(( $(date +%s) - START ))" "${NOTES[@]+"${NOTES[@]}"}" <<'PY'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

results, status, seconds, notes = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
junit = results / "gpu-junit.xml"
if junit.is_file():
    for case in ET.parse(junit).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "failed" if tag != "skipped" else "skipped"
                why = (found.get("message") or "").splitlines()[0][:110] if found.get(
                    "message") else ""
                break
        else:
            why = ""
        counts[outcome] += 1
        rows.append((outcome.upper(), case.get("name", "?"), why))
print("\n================ edgeseg GPU check ================")
for outcome, name, why in rows:
    print(f"  {outcome:8} {name}{f'  ({why})' if why else ''}")
report = results / "gpu-report.json"
if report.is_file():
    print("measured:")
    for key, value in sorted(json.loads(report.read_text()).items()):
        print(f"  {key:44} {value}")
for line in notes:
    print(f"note: {line}")
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
      f"in {seconds} s (pytest exit {status}); files in {results}")
sys.exit(1 if status or not counts["passed"] or counts["failed"] else 0)
PY
