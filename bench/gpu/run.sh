#!/usr/bin/env bash
# The GPU check of the kernels issue, run ON the device machine (CUDA, no Rust) from the kit that
# `cargo xtask gpu-kit tests|benches` builds on the CPU machine (target/gpu-kit, carried by the
# device tool; the two parts are two device calls, each under the 64 MiB a call carries):
#   bash target/gpu-kit/run.sh            # results under $OUT (or ./gpu-results)
# Steps whose binaries are not in this part of the kit are skipped.
# 1. CubeCL kernel tests (any4-kernels) and the Burn Cube-route tests (any4-burn, `cube_cuda`),
#    with ANY4_REQUIRE_DEVICE=1 so a CUDA device that fails to start is a failure, not a skip;
# 2. `bench kernels --backend cuda` at f16 (the GPU baseline) and f32, batch 1/4/16/64;
# 3. `bench decode --backend cuda` on the embedded tiny model.
# Every step runs even if an earlier one fails, each within what is left of BUDGET seconds
# (default 540: one device call may run 600 s). Logs, JSON and summary.md go to $OUT.
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$PWD/gpu-results}"
BUDGET="${BUDGET:-540}"
mkdir -p "$OUT"
cd "$KIT"
for f in bin/*.xz; do [[ -e $f ]] && xz -d -f "$f"; done
chmod +x bin/* 2>/dev/null
export ANY4_REQUIRE_DEVICE=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
summary="$OUT/summary.md"
echo "# GPU check $(date -u +%FT%TZ)" > "$summary"
head -15 "$OUT/nvidia-smi.txt" | sed 's/^/    /' >> "$summary"
step() {  # name, max seconds, command...
  local name=$1 want=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if (( left < 10 )); then echo "- $name: not run (budget spent)" | tee -a "$summary"; return; fi
  local t=$(( want < left ? want : left )) start=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local note=""
  (( rc == 124 )) && note=" (timed out at ${t} s)"
  grep -q "no device, skipped" "$OUT/$name.log" && note="$note (device tests SKIPPED)"
  echo "- $name: exit $rc in $((SECONDS - start)) s$note" | tee -a "$summary"
}
for t in bin/test-*; do
  [[ -x $t ]] && step "$(basename "$t")" 200 "$t"
done
[[ -x bin/bench-kernels ]] && step bench-kernels-f16 150 bin/bench-kernels --backend cuda --dtype f16 \
  --sizes 4096,8192,16384 --batch 1,4,16,64 --repeats 20 --json "$OUT/kernels-cuda-f16.json"
[[ -x bin/bench-kernels ]] && step bench-kernels-f32 60 bin/bench-kernels --backend cuda --dtype f32 \
  --sizes 4096,8192 --batch 1,16 --repeats 20 --json "$OUT/kernels-cuda-f32.json"
[[ -x bin/bench-decode ]] && step bench-decode 60 bin/bench-decode --backend cuda --models models/tiny-llama \
  --tokens 64 --repeats 5 --json "$OUT/decode-cuda.json"
grep -h "test result" "$OUT"/test-*.log >> "$summary" 2>/dev/null
cat "$summary"
