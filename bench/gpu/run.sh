#!/usr/bin/env bash
# The GPU check, run ON the device machine (CUDA, no Rust) from one part of the kit that
# `cargo xtask gpu-kit kernels|decode` builds on the CPU machine (target/gpu-kit, carried by the
# device tool; each part is one device call, under the 64 MiB a call carries):
#   bash target/gpu-kit/run.sh            # results under $OUT (or ./gpu-results)
# Steps whose binaries or scripts are not in this part are skipped; every step runs even if an
# earlier one fails, each within what is left of BUDGET seconds (default 540: a call may run 600).
#   kernels part: 1. the CubeCL kernel tests (any4-kernels: every path against any4-core on CUDA,
#                    the tensor-core GEMM included, the prmt-vs-portable int8 bit-identity) and the
#                    Burn Cube-route tests (any4-burn; a device that fails to start fails them,
#                    never skips them); the kernel tests again under
#                    `compute-sanitizer --tool memcheck` where the machine has it;
#                 2. `bench-kernels --backend cuda` (bf16: cuBLAS bf16 and Burn's dense matmul in
#                    the same process; M = 1, 4, 16, 64 on the issue's six shapes);
#                 3. the anchors: anchors.py (cuBLAS via PyTorch, tinygemm int4), probe.py.
#   decode part:  4. `bench-decode --backend cuda` on random models of SmolLM2-135M, Llama-3.2-1B and
#                    Llama-3-8B shapes (dense bf16 vs any4, same run; each decode as a recorded
#                    step replayed and as ordinary steps: the difference is the host work per
#                    token) and the tiny model;
#                    decode_anchor.py (transformers, same shapes, bf16, greedy).
# Output: $OUT/summary.md and $OUT/results.tar.xz (logs and JSON; the device tool returns at most
# 8 files).
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$PWD/gpu-results}"
BUDGET="${BUDGET:-540}"
RES="$OUT/results"
mkdir -p "$RES"
cd "$KIT"
for f in bin/*.xz; do [[ -e $f ]] && xz -d -f "$f"; done
chmod +x bin/* 2>/dev/null
nvidia-smi > "$RES/nvidia-smi.txt" 2>&1
summary="$OUT/summary.md"
echo "# GPU check $(date -u +%FT%TZ)" > "$summary"
head -15 "$RES/nvidia-smi.txt" | sed 's/^/    /' >> "$summary"
step() {  # name, max seconds, command...
  local name=$1 want=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if (( left < 10 )); then echo "- $name: not run (budget spent)" | tee -a "$summary"; return; fi
  local t=$(( want < left ? want : left )) start=$SECONDS
  timeout "$t" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  local note=""
  (( rc == 124 )) && note=" (timed out at ${t} s)"
  grep -q "no device, skipped" "$RES/$name.log" && note="$note (device tests SKIPPED)"
  echo "- $name: exit $rc in $((SECONDS - start)) s$note" | tee -a "$summary"
}
for t in bin/test-*; do
  [[ -x $t ]] && step "$(basename "$t")" 150 "$t"
done
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [[ -x bin/test-any4-kernels-kernels && -n $SANITIZER ]]; then
  # The int8, exact and tensor-core paths on the tail shapes (fast under memcheck).
  step memcheck-kernels 120 "$SANITIZER" --tool memcheck --error-exitcode 3 \
    bin/test-any4-kernels-kernels cuda::short_last_group cuda::k_not_multiple cuda::n_not_tile
elif [[ -x bin/test-any4-kernels-kernels ]]; then
  echo "- memcheck-kernels: not run (no compute-sanitizer on this machine)" | tee -a "$summary"
fi
[[ -x bin/bench-kernels ]] && step bench-kernels-bf16 200 bin/bench-kernels --backend cuda \
  --dtype bf16 --batch 1,4,16,64 --json "$RES/kernels-cuda-bf16.json"
command -v python3 > /dev/null || echo "- anchors: no python3" | tee -a "$summary"
[[ -f anchors.py ]] && step anchors 120 python3 anchors.py --batch 1,4,16,64 --json "$RES/anchors.json"
[[ -f probe.py ]] && step probe 60 python3 probe.py --json "$RES/probe.json"
[[ -x bin/bench-decode ]] && step bench-decode-random 300 bin/bench-decode --backend cuda \
  --random-config smollm2-135m,llama-3.2-1b --prompt 32 --tokens 128 --prefill 512 --repeats 3 \
  --json "$RES/decode-cuda-random.json"
[[ -x bin/bench-decode ]] && step bench-decode-8b 240 bin/bench-decode --backend cuda \
  --random-config llama-3-8b --prompt 32 --tokens 128 --prefill 512 --repeats 3 \
  --json "$RES/decode-cuda-8b.json"
[[ -x bin/bench-decode ]] && step bench-decode-tiny 120 bin/bench-decode --backend cuda \
  --models models/tiny-llama --tokens 64 --repeats 5 --json "$RES/decode-cuda.json"
[[ -f decode_anchor.py ]] && step decode-anchor 200 python3 decode_anchor.py --prompt 32 --tokens 128 --repeats 3 --json "$RES/decode-anchor.json"
grep -h "test result" "$RES"/test-*.log >> "$summary" 2>/dev/null
grep -h "ERROR SUMMARY" "$RES"/memcheck-*.log >> "$summary" 2>/dev/null
[[ -f $RES/kernels-cuda-bf16.md ]] && cat "$RES/kernels-cuda-bf16.md" >> "$summary"
tar -C "$OUT" -cJf "$OUT/results.tar.xz" results && rm -rf "$RES"
cat "$summary"
