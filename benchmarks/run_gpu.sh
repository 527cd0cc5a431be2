#!/usr/bin/env bash
# One call on the GPU machine: build the CUDA extension (if csrc/ exists), run the whole test suite (GPU-parametrised
# tests run on cuda there), time every benchmark, write full logs and JSON under $OUT, print a short table last.
#   run: GIT_COMMIT=<sha> bash benchmarks/run_gpu.sh        (OUT defaults to ./gpu-out)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status() { printf '%-28s %s\n' "$1" "$2" >> "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUT/device.txt"

if ls csrc/*.cu csrc/*/*.cu >/dev/null 2>&1; then
  start=$(date +%s)
  if python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then status build "ok ($(( $(date +%s) - start )) s)"
  else status build "FAILED (see build.log)"; tail -30 "$OUT/build.log"; fi
fi
python3 -c 'import resefa_fast as rf, json; print(json.dumps(rf.backend_info()["extension"]))' > "$OUT/extension.txt" 2>&1
status extension "$(cat "$OUT/extension.txt" | head -c 150)"

timeout 420 python3 -m pytest -q -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1
status tests "$(tail -1 "$OUT/pytest.log")"

for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  timeout 400 python3 "$bench" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  rc=$?; status "$name" "rc=$rc"
done
echo "=== summary ==="; cat "$OUT/device.txt" "$OUT/summary.txt"
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py); echo "=== $name (table) ==="; grep -E '^\|' "$OUT/$name.log" | head -40
done
