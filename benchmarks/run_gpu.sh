#!/usr/bin/env bash
# One call on the GPU machine: build the CUDA extension, run the GPU tests, time the benchmarks; full logs and JSON
# under $OUT, a short table last. Steps are chosen on the command line (a device call is limited to 10 minutes):
#   GIT_COMMIT=<sha> bash benchmarks/run_gpu.sh build tests bench:main_job bench:models ...
#   (no arguments: build tests and every bench_*.py, which is longer than one call allows)
# "sanitize": compute-sanitizer memcheck over a small call of every extension kernel; "tests": the test files whose
# tests are parametrised over CUDA; "tests:FILE": one file; "bench:NAME[:ARGS]": benchmarks/bench_NAME.py --json
# $OUT/NAME.json ARGS (repeats: NAME_2.json ...); "profile:NAME[:ARGS]": benchmarks/profile_NAME.py ARGS (output
# in $OUT/profile_NAME.log, _2, _3 ... for repeats); "study:NAME[:ARGS]": benchmarks/study_NAME.py ARGS
# ($OUT/study_NAME.log); "train:ARGS": python -m resefa_fast.train ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the device copy has no installed package
status() { printf '%-28s %s\n' "$1" "$2" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUT/device.txt"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(build tests $(for b in benchmarks/bench_*.py; do n=$(basename "$b" .py); echo "bench:${n#bench_}"; done))
GPU_TESTS="tests/test_cuda_ops.py tests/test_solvers.py tests/test_api.py tests/test_jacobian.py tests/test_models.py tests/test_sampled_readout.py tests/test_explicit_tangents.py"

for step in "${steps[@]}"; do
  start=$(date +%s)
  case "$step" in
    build)
      if python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then status build "ok ($(( $(date +%s) - start )) s)"
      else status build "FAILED (see build.log)"; tail -30 "$OUT/build.log"; fi
      python3 -c 'import resefa_fast as rf, json; print(json.dumps(rf.backend_info()["extension"]))' > "$OUT/extension.txt" 2>&1
      status extension "$(head -c 150 "$OUT/extension.txt")";;
    sanitize) timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/sanitize_cuda_ops.py \
        > "$OUT/sanitize.log" 2>&1
      status sanitize "rc=$? $(tail -1 "$OUT/sanitize.log") ($(( $(date +%s) - start )) s)";;
    tests) timeout 400 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS > "$OUT/pytest.log" 2>&1
      status tests "$(tail -1 "$OUT/pytest.log") ($(( $(date +%s) - start )) s)";;
    tests:*) f=${step#tests:}; timeout 400 python3 -m pytest -q -p no:cacheprovider "$f" > "$OUT/pytest_$(basename "$f" .py).log" 2>&1
      status "$f" "$(tail -1 "$OUT/pytest_$(basename "$f" .py).log") ($(( $(date +%s) - start )) s)";;
    bench:*) spec=${step#bench:}; name=${spec%%:*}; extra=""; [ "$spec" != "$name" ] && extra=${spec#*:}
      base=$name; i=2; while [ -e "$OUT/$base.log" ]; do base="${name}_$i"; i=$((i + 1)); done  # repeats: _2, _3
      timeout 480 python3 "benchmarks/bench_$name.py" --json "$OUT/$base.json" $extra > "$OUT/$base.log" 2>&1
      status "bench_$name" "rc=$? ($(( $(date +%s) - start )) s)";;
    profile:*) spec=${step#profile:}; name=${spec%%:*}; extra=""; [ "$spec" != "$name" ] && extra=${spec#*:}
      log="$OUT/profile_$name.log"; i=2; while [ -e "$log" ]; do log="$OUT/profile_${name}_$i.log"; i=$((i + 1)); done
      timeout 480 python3 "benchmarks/profile_$name.py" $extra > "$log" 2>&1
      status "profile_$name $extra" "rc=$? ($(( $(date +%s) - start )) s)"; grep -v '^{' "$log" | tail -12;;
    study:*) spec=${step#study:}; name=${spec%%:*}; extra=""; [ "$spec" != "$name" ] && extra=${spec#*:}
      timeout 480 python3 "benchmarks/study_$name.py" $extra > "$OUT/study_$name.log" 2>&1
      status "study_$name" "rc=$? ($(( $(date +%s) - start )) s)";;
    train:*) timeout 560 python3 -m resefa_fast.train ${step#train:} > "$OUT/train.log" 2>&1
      status train "rc=$? ($(( $(date +%s) - start )) s)"; tail -5 "$OUT/train.log";;
    *) status "$step" "unknown step";;
  esac
done
echo "=== summary ==="; cat "$OUT/device.txt" "$OUT/summary.txt"
for log in "$OUT"/*.log; do
  grep -qE '^\|' "$log" && { echo "=== $(basename "$log" .log) ==="; grep -E '^\|' "$log" | head -30; }
done
exit 0
