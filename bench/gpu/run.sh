#!/usr/bin/env bash
# The GPU check of the kernels issue, run ON the device machine (CUDA, no Rust) from the kit that
# `cargo xtask gpu-kit` builds on the CPU machine (target/gpu-kit, carried by the device tool):
#   bash target/gpu-kit/run.sh            # results under $OUT (or ./gpu-results)
# 1. CubeCL kernel tests (any4-kernels) and the Burn Cube-route tests (any4-burn) on CUDA;
# 2. `bench kernels --backend cuda` at f16 and f32, K = N 1024…16384, batch 1/4/16/64;
# 3. `bench decode --backend cuda` on the embedded tiny model.
# Every step runs even if an earlier one fails; a summary and each step's log go to $OUT.
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT" "$KIT/bin"
cd "$KIT"
for f in bin/*.xz; do [[ -e $f ]] && xz -d -f "$f"; done
chmod +x bin/* 2>/dev/null
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
summary="$OUT/summary.md"
echo "# GPU check $(date -u +%FT%TZ)" > "$summary"
head -15 "$OUT/nvidia-smi.txt" | sed 's/^/    /' >> "$summary"
step() {  # name, timeout seconds, command...
  local name=$1 t=$2; shift 2
  local start=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "- $name: exit $rc in $((SECONDS - start)) s" | tee -a "$summary"
}
for t in bin/test-*; do
  step "$(basename "$t")" 300 "$t"
done
step bench-kernels-f16 400 bin/bench-kernels --backend cuda --dtype f16 \
  --sizes 1024,4096,8192,16384 --batch 1,4,16,64 --repeats 20 --json "$OUT/kernels-cuda-f16.json"
step bench-kernels-f32 300 bin/bench-kernels --backend cuda --dtype f32 \
  --sizes 4096,8192 --batch 1,16 --repeats 20 --json "$OUT/kernels-cuda-f32.json"
step bench-decode 300 bin/bench-decode --backend cuda --models models/tiny-llama \
  --tokens 64 --repeats 5 --json "$OUT/decode-cuda.json"
grep -h "test result" "$OUT"/test-*.log >> "$summary" 2>/dev/null
cat "$summary"
