#!/usr/bin/env bash
# Which layers make int4 worse than fp4 on SmolLM2-135M? Quantize ONE projection type at a time
# (every layer of that type, group 128, one-shot calibration; the other six types stay dense)
# with int4 and with fp4, and measure perplexity on the first WINDOWS windows of PTB valid
# (seq 2048). Prints a markdown table; docs/RESULTS.md quotes it.
# Needs `cargo xtask fetch smollm2 ptb` and a release build of the CLI
# (`cargo build --release -p any4-cli`).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/any4
MODEL=.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WINDOWS=${WINDOWS:-1}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TYPES=(q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)
ppl() { "$BIN" eval --model "$1" --dataset ptb --max-windows "$WINDOWS" --json 2>/dev/null |
  sed -n 's/.*"ppl":\([0-9.e+-]*\).*/\1/p'; }
echo "dense baseline (first $WINDOWS PTB windows): $(ppl "$MODEL")"
echo
echo "| quantized type | int4 ppl | fp4 ppl | int4 rel. MSE | fp4 rel. MSE | int4 act.-weighted | fp4 act.-weighted |"
echo "|---|---|---|---|---|---|---|"
for t in "${TYPES[@]}"; do
  skips=()
  for o in "${TYPES[@]}"; do [[ $o == "$t" ]] || skips+=(--skip "$o"); done
  row="| $t"
  errs=""
  for f in int4 fp4; do
    j=$("$BIN" quantize --model "$MODEL" --out "$TMP/$f" --format "$f" "${skips[@]}" --json 2>/dev/null)
    row="$row | $(ppl "$TMP/$f")"
    mse=$(sed -n 's/.*"rel_mse":\([0-9.e+-]*\).*/\1/p' <<<"$j")
    wmse=$(sed -n 's/.*"weighted_rel_mse":\([0-9.e+-]*\).*/\1/p' <<<"$j")
    errs="$errs | $mse | $wmse"
  done
  # reorder: int4 ppl, fp4 ppl, then the four errors
  echo "$row$(awk -F' [|] ' '{print " | "$2" | "$4" | "$3" | "$5}' <<<"$errs") |"
done
