#!/usr/bin/env bash
# The GPU suite (docs/gpu.md), on a machine with a CUDA device, from the repository root or anywhere, nothing to edit:
#
#     bash bench/gpu_suite.sh
#
# 1. A virtualenv with a CUDA torch (python3's own when it has one, else pip's), spct built by pip with its CUDA
#    kernels for this machine's GPUs, and spct._C.has_cuda checked.
# 2. With SPCT_STRICT=1: every CUDA kernel test of tests/ against its reference (the tests with "cuda" in their id,
#    and tests/test_paged_attention_triton.py, which runs the Triton kernel on the GPU), then tests/test_cuda_engine.py
#    (the Engine on CUDA: greedy equal to transformers, k-sample invariance, submit). A test that is skipped, or a
#    test file that runs no test, fails the suite: a CUDA test cannot pass by not running.
# 3. bench/bench_generate.py on CUDA, short: bfloat16, k = 1 and 16, 64 new tokens.
#
# Writes suite.log (everything), summary.md, kernels.xml and engine.xml (JUnit) and bench_generate.json into
# $SPCT_GPU_RESULTS (default build-gpu/results-<UTC time>), and exits 0 only when every step passed.
# Settings (environment): SPCT_GPU_VENV (default build-gpu/venv); SPCT_GPU_TORCH (pip's arguments for torch when no
# CUDA torch is installed, default "torch==2.13.0"; e.g. "torch --index-url https://download.pytorch.org/whl/cu126"
# for an older driver); SPCT_GPU_ARCH (CMAKE_CUDA_ARCHITECTURES, default the GPUs' compute capabilities from
# nvidia-smi, else 80;90); SPCT_GPU_STEP_TIMEOUT (seconds per test or bench step, default 300); SPCT_CACHE (where the
# default model is fetched to, as everywhere; an offline machine needs it filled beforehand).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

results=${SPCT_GPU_RESULTS:-build-gpu/results-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results" && results=$(cd "$results" && pwd)
exec > >(tee -a "$results/suite.log") 2>&1

# The suite tests the wheel it builds: never the source tree's module, another native build or Triton's interpreter.
unset PYTHONPATH SPCT_NATIVE_LIB TRITON_INTERPRET
export SPCT_STRICT=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
step_timeout=${SPCT_GPU_STEP_TIMEOUT:-300}
rows=()
failed=0
about=""

step() { printf '\n== %s == (%s UTC)\n' "$*" "$(date -u +%T)"; }
record() {  # step, PASS | FAIL | NOT RUN, detail
  rows+=("| $1 | $2 | $3 |")
  [ "$2" = PASS ] || failed=1
  printf -- '-> %s: %s %s\n' "$1" "$2" "$3"
}

summary() {
  {
    echo "# GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$about"
    echo
    echo "| step | status | detail |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    if [ -s "$results/bench.txt" ]; then
      printf '\n## bench_generate on CUDA\n\n```\n'
      cat "$results/bench.txt"
      printf '```\n'
    fi
  } >"$results/summary.md"
  rm -f "$results/bench.txt"
  printf '\n'
  cat "$results/summary.md"
  printf '\nresults: %s\n' "$results"
}

stop() {  # a setup step failed: nothing after it can run
  record "$1" FAIL "$2"
  summary
  exit 1
}

cuda_torch() {  # python: whether its torch sees a CUDA device
  "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

# ---- 1. environment and build ----------------------------------------------------------------------------------
step "GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi is not on PATH; torch decides below whether there is a CUDA device"
fi

step "virtualenv with a CUDA torch"
venv=${SPCT_GPU_VENV:-build-gpu/venv}
if [ -x "$venv/bin/python" ] && cuda_torch "$venv/bin/python"; then
  echo "reusing $venv"
elif command -v python3 >/dev/null && cuda_torch python3; then
  # python3's torch (and the rest of its packages) seen from the new virtualenv: --system-site-packages alone misses
  # them when python3 is itself a virtualenv, so a .pth file names its site directories too
  python3 -m venv --clear --system-site-packages "$venv" || stop "virtualenv" "python3 -m venv failed"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  python3 -c "import os, site, torch; print(*site.getsitepackages(), os.path.dirname(os.path.dirname(torch.__file__)),
    sep='\n')" >"$site/gpu_suite_base.pth"
  echo "using python3's CUDA torch"
else
  python3 -m venv --clear "$venv" || stop "virtualenv" "python3 -m venv failed"
  read -r -a torch_args <<<"${SPCT_GPU_TORCH:-torch==2.13.0}"
  "$venv/bin/python" -m pip install -q "${torch_args[@]}" || stop "torch" "pip install ${torch_args[*]} failed"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
cuda_torch python || stop "torch" "torch $(python -c 'import torch; print(torch.__version__)' 2>&1 | tail -1) sees no \
CUDA device (a CPU build, or a CUDA build newer than the driver: set SPCT_GPU_TORCH, see the header of this script)"
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

step "build spct with its CUDA kernels"
command -v nvcc >/dev/null || stop "build" "no CUDA compiler (nvcc) on PATH or in /usr/local/cuda/bin"
arch=${SPCT_GPU_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u |
  paste -sd';')}
arch=${arch:-"80;90"}
echo "nvcc: $(nvcc --version | tail -1); CMAKE_CUDA_ARCHITECTURES=$arch"
export SPCT_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$arch"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
build=(-C build-dir=build-gpu/cmake)  # not the CPU build's folder (build/)
if python - <<'EOF'
import os, sys, urllib.request
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
try:
    urllib.request.urlopen(f"{index}/pip/", timeout=5)
except Exception as e:
    print(f"the package index {index} is out of reach ({e}): building offline from the installed packages")
    sys.exit(1)
EOF
then
  python -m pip install -q "${build[@]}" '.[test,triton]' || stop "build" "pip install '.[test,triton]' failed"
else
  python -m pip install -q --no-build-isolation --no-deps "${build[@]}" . ||
    stop "build" "offline: pip install --no-build-isolation --no-deps . failed (needs scikit-build-core, pybind11)"
  missing=$(python -c "import importlib.util as u; print(*[m for m in ('pytest', 'pytest_benchmark', 'hypothesis',
    'transformers', 'tokenizers', 'safetensors', 'triton', 'yaml', 'tqdm', 'huggingface_hub') if not u.find_spec(m)])")
  [ -z "$missing" ] || stop "build" "offline, and these test dependencies are missing: $missing"
fi
native=$(cd /tmp && python -c "import spct._C as c; assert c.has_cuda, 'built without CUDA'; print(c.__file__)") ||
  stop "build" "spct._C does not load, or has no CUDA kernels"
record "build" PASS "spct._C with CUDA kernels for sm_${arch//;/, sm_}"
about=$(python -c "import torch, spct; print(f'- GPU: {torch.cuda.get_device_name()}\n- torch {torch.__version__}, \
CUDA {torch.version.cuda}\n- spct {spct.__version__}, native module $native')")

step "the default model"
if python -c "from spct.engine.models import fetch; print(fetch('smollm2-135m'))"; then
  record "model" PASS "smollm2-135m"
else
  record "model" FAIL "fetch('smollm2-135m') failed: no network? fill SPCT_CACHE beforehand (docs/gpu.md)"
fi

# ---- 2. tests ------------------------------------------------------------------------------------------------------
check_junit() {  # junit file, the test files that must each pass at least one test
  python - "$@" <<'EOF'
import collections
import sys
import xml.etree.ElementTree as ET

path, required = sys.argv[1], sys.argv[2:]
counts = collections.defaultdict(collections.Counter)
for case in ET.parse(path).getroot().iter("testcase"):
    parts = case.get("classname", "?").split(".")
    module = next((p for p in parts if p.startswith("test_")), parts[-1])
    outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    counts[module][outcome] += 1
bad = []
for module in sorted(set(counts) | set(required)):
    c = counts[module]
    print(f"  {module:32s} {c['passed']:3d} passed {c['skipped']:3d} skipped {c['failure'] + c['error']:3d} failed")
    if c["skipped"]:
        bad.append(f"{module}: {c['skipped']} skipped")
    if module in required and not c["passed"]:
        bad.append(f"{module}: no test passed")
total = sum(sum(c.values()) for c in counts.values())
if bad or not total:
    print("  not a pass:", "; ".join(bad) or "no test ran")
    sys.exit(1)
print(f"  {total} tests, all passed")
EOF
}

run_tests() {  # step name, junit file, required test files (space-separated), pytest arguments...
  local name=$1 xml=$2 required=$3
  shift 3
  step "$name"
  rm -f "$xml"
  timeout "$step_timeout" python -m pytest -q -rs -p no:cacheprovider --junitxml="$xml" "$@"
  local rc=$?
  if [ ! -s "$xml" ]; then
    record "$name" FAIL "pytest exited $rc without a JUnit report (timeout: $step_timeout s)"
    return
  fi
  local counts ok
  # shellcheck disable=SC2086 # $required: one word per test file
  counts=$(check_junit "$xml" $required)
  ok=$?
  echo "$counts"
  if [ "$rc" -eq 0 ] && [ "$ok" -eq 0 ]; then
    record "$name" PASS "$(echo "$counts" | tail -1 | sed 's/^ *//')"
  else
    record "$name" FAIL "pytest exit $rc; $(echo "$counts" | tail -1 | sed 's/^ *//') ($(basename "$xml"))"
  fi
}

run_tests "CUDA kernels vs reference" "$results/kernels.xml" \
  "test_extract_scores test_prefix_attention test_sample test_vote test_paged_attention_triton" \
  -k "cuda or paged_attention_triton" tests/test_extract_scores.py tests/test_prefix_attention.py \
  tests/test_sample.py tests/test_vote.py tests/test_philox.py tests/test_paged_attention.py \
  tests/test_paged_attention_triton.py
run_tests "Engine on CUDA" "$results/engine.xml" "test_cuda_engine" tests/test_cuda_engine.py

# ---- 3. the generate bench -----------------------------------------------------------------------------------------
step "bench_generate on CUDA"
if grep -q SPCT_BENCH_DEVICE bench/bench_generate.py; then
  rm -f "$results/bench_generate.json"
  SPCT_BENCH_DEVICE=cuda SPCT_BENCH_NEW_TOKENS=64 SPCT_BENCH_ROUNDS=3 timeout "$step_timeout" python -m pytest -q -s \
    -p no:cacheprovider bench/bench_generate.py --benchmark-enable -k "bfloat16 and (k1- or k16-)" \
    --benchmark-json="$results/bench_generate.json"
  rc=$?
  if python - "$results/bench_generate.json" >"$results/bench.txt" <<'EOF'
import json
import sys

runs = json.load(open(sys.argv[1]))["benchmarks"]
assert runs, "no benchmark ran"
for run in runs:
    info = run["extra_info"]
    assert not str(info.get("device", "cuda")).startswith("cpu"), f"ran on {info['device']}, not on CUDA"
    line = f"{info['dtype']:8s} k={info['k']:2d} spct {info['spct_tokens_per_s']:8.1f} tok/s"
    if "transformers_tokens_per_s" in info:
        hf, ratio = info["transformers_tokens_per_s"], info["ratio_vs_transformers"]
        line += f"  transformers {hf:8.1f} tok/s  ratio {ratio:.2f}x"
    print(line)
EOF
  then
    if [ "$rc" -eq 0 ]; then
      record "bench_generate" PASS "bfloat16, k = 1 and 16, 64 new tokens"
    else
      record "bench_generate" FAIL "pytest exit $rc"
    fi
  else
    record "bench_generate" FAIL "pytest exit $rc; no usable bench_generate.json"
  fi
  cat "$results/bench.txt"
else
  record "bench_generate" "NOT RUN" "bench/bench_generate.py has no SPCT_BENCH_DEVICE yet: it runs on the CPU only"
fi

summary
exit "$failed"
