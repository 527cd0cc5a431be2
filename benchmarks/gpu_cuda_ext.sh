#!/usr/bin/env bash
# One device call for the CUDA extension: build it (setup.py, sm_90 + PTX), build and run the CMake C++ driver,
# compute-sanitizer memcheck + racecheck (driver and a small Python run of every kernel), the GPU tests, the
# benchmark. Logs and JSON under $OUT; a short table last.
#   GIT_COMMIT=<sha> bash benchmarks/gpu_cuda_ext.sh        (BENCH=0: everything but the benchmark)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
S="$OUT/summary.txt"; : > "$S"
say() { printf '%-22s %s\n' "$1" "$2" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$S"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$S"

t=$(date +%s)
if python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then say build "ok ($(( $(date +%s) - t )) s)"
else say build FAILED; grep -E "error" "$OUT/build.log" | head -20; fi
python3 -c 'from resefa_fast._ext import extension_status as s; print(s())' 2>&1 | tee -a "$S"

# CMake library + driver: the wheel's cuBLAS / cuSOLVER where the toolkit has none.
NV=$(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s) for p in nvidia.__path__ for s in ("cu13", "cublas", "cusolver")))' 2>/dev/null)
LIBS=$(for d in $NV; do [ -d "$d/lib" ] && printf '%s;' "$d/lib"; done)
INCS=$(for d in $NV; do [ -d "$d/include" ] && printf '%s;' "$d/include"; done)
t=$(date +%s)
if cmake -S . -B build/cmake -DRESEFA_CUDA_LIBRARY_DIRS="$LIBS" -DRESEFA_CUDA_INCLUDE_DIRS="$INCS" > "$OUT/cmake.log" 2>&1 \
   && cmake --build build/cmake -j 16 >> "$OUT/cmake.log" 2>&1; then
  say cmake "ok ($(( $(date +%s) - t )) s)"
  LD_LIBRARY_PATH="${LIBS//;/:}${LD_LIBRARY_PATH:-}" build/cmake/resefa_driver > "$OUT/driver.log" 2>&1; say driver "rc=$? $(tail -1 "$OUT/driver.log")"
  for tool in memcheck racecheck; do
    LD_LIBRARY_PATH="${LIBS//;/:}${LD_LIBRARY_PATH:-}" timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 \
      build/cmake/resefa_driver > "$OUT/sanitize_driver_$tool.log" 2>&1
    say "driver $tool" "rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_driver_$tool.log" | tail -1)"
  done
else say cmake FAILED; tail -20 "$OUT/cmake.log"; fi
for tool in memcheck racecheck; do
  timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/sanitize_cuda_ops.py \
    > "$OUT/sanitize_py_$tool.log" 2>&1
  say "python $tool" "rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize ok' "$OUT/sanitize_py_$tool.log" | tr '\n' ' ')"
done

timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_ops.py > "$OUT/pytest.log" 2>&1
say tests "$(tail -1 "$OUT/pytest.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20

if [ "${BENCH:-1}" != 0 ]; then
  timeout 300 python3 benchmarks/bench_cuda_ops.py --json "$OUT/bench_cuda_ops.json" > "$OUT/bench.log" 2>&1
  say bench "rc=$?"
fi
echo "=== summary ==="; cat "$S"
if [ -f "$OUT/bench.log" ]; then  # (as a bare `[ -f ] && ...` it made the script exit 1 whenever BENCH=0)
  echo "=== bench ==="; grep -E '^(\||device)' "$OUT/bench.log" | tail -40
fi
