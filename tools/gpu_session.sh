#!/usr/bin/env bash
# Everything this project checks on a GPU, in one command: a lent GPU machine's time is short
# and every fresh machine needs a new build.
#
#   bash tools/gpu_session.sh [OUT_DIR]        # logs and benchmark JSON in OUT_DIR (default gpu-session)
#
# 1. builds the extension in place with the CUDA sources for the visible GPU (FASTSEG_CUDA=1);
# 2. runs every CUDA test (lattice, dense CRF, pydensecrf-compatible API, Triton kernels);
# 3. profiles a CUDA dense-CRF call (tools/profile_cuda_crf.py);
# 4. runs the GPU benchmarks: the CRF's CUDA rows beside pydensecrf, Triton against cuDNN.
#
# On the H100 machine (16 cores) the steps took: pydensecrf 50 s, build 30 s, CUDA tests 3 min
# without pytest-xdist, profile 20 s, benchmarks 3 min. Give it 10 minutes.
#
# Uses the python3 on PATH and the torch installed there. pydensecrf (pydensecrf2) is the
# benchmarks' and some tests' reference; where no package index is reachable, point
# PYDENSECRF_SDIST at a pydensecrf2 source archive and it is built first (needs Cython).
# Steps go on after a failure; the exit status is that of the CUDA tests.
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu-session}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
step() { echo "=== $1 ($((SECONDS - start)) s)"; }
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_session.sh: torch sees no CUDA device"; exit 1; }

pdc_pid=
if [ -n "${PYDENSECRF_SDIST:-}" ]; then
  step "pydensecrf from $PYDENSECRF_SDIST (in the background, during the build)"
  (python3 -m pip install -q --no-index --no-build-isolation --no-deps "$PYDENSECRF_SDIST" \
    > "$out/pydensecrf.log" 2>&1 || echo "pydensecrf did not build: see $out/pydensecrf.log") &
  pdc_pid=$!
fi

step "build"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
FASTSEG_CUDA=1 FASTSEG_PTXAS_VERBOSE=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  python3 setup.py build_ext --inplace > "$out/build.log" 2>&1 \
  || { tail -30 "$out/build.log"; echo "build failed"; exit 1; }
python3 tools/ptxas_report.py "$out/build.log" > "$out/ptxas.txt"

[ -n "$pdc_pid" ] && wait "$pdc_pid"

step "CUDA tests"
# The Triton tests spend most of their time compiling; pytest-xdist, where installed, spreads them.
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
python3 -m pytest -q -rs -p no:cacheprovider $xdist tests/test_lattice_cuda.py tests/test_cuda_atrous.py \
  tests/test_dense_crf.py tests/test_densecrf_compat.py -k "cuda" > "$out/cuda_tests.log" 2>&1
tests_status=$?
tail -3 "$out/cuda_tests.log"

step "CUDA dense-CRF profile"
python3 tools/profile_cuda_crf.py > "$out/profile_cuda_crf.log" 2>&1
grep -E "lattice:|labels:|filtering" "$out/profile_cuda_crf.log"

step "GPU benchmarks"
python3 -m pytest bench/test_bench_crf.py -k "cuda or (test_crf_astronaut and pydensecrf)" \
  --benchmark-only -p no:cacheprovider --benchmark-json="$out/bench_crf.json" > "$out/bench_crf.log" 2>&1
grep -E "faster than" "$out/bench_crf.log"
python3 -m pytest bench/test_bench_gpu_atrous.py --benchmark-only -p no:cacheprovider \
  --benchmark-json="$out/bench_gpu_atrous.json" > "$out/bench_gpu_atrous.log" 2>&1
tail -1 "$out/bench_gpu_atrous.log"

step "done"
exit $tests_status
