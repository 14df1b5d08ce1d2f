#!/usr/bin/env bash
# Fuzz every reader of untrusted input (docs/RELIABILITY.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]   run each target SECONDS (default 120), one after another
#   fuzz/run.sh --seeds                 regenerate the committed seed corpora in fuzz/seeds/
#
# Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz`. One libFuzzer process
# at a time (in-process, the equivalent of -jobs=1), RSS capped at 2 GiB, so a hostile length
# field that makes a reader allocate without bound is reported as a crash ("out-of-memory").
# New corpus entries go to fuzz/corpus/TARGET (git-ignored), crashes to fuzz/artifacts/TARGET,
# logs with libFuzzer's final statistics to fuzz/logs/TARGET.log; fuzz/dicts/TARGET.dict lists
# the keys and numbers each format is made of. Exit status 1 if any target
# found a crash, an out-of-memory or a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL=(gguf gguf_tokenizer checkpoint quant_config llama_config tokenizer)
# Inputs are small: every seed is a few KB, and nothing a reader does depends on size beyond
# that (limits are relative to the file size).
declare -A MAX_LEN=([gguf]=16384 [gguf_tokenizer]=16384 [checkpoint]=16384
    [quant_config]=16384 [llama_config]=4096 [tokenizer]=16384)
# No sanitizer: the code under test is safe Rust (plus mmap), and the 2 cores go twice as far.
# Overflow checks and debug assertions stay on (cargo-fuzz's default).
BUILD=(-s none --codegen-units 16)
BIN=fuzz/target/x86_64-unknown-linux-gnu/release

cargo +nightly fuzz build "${BUILD[@]}" || exit 2

if [[ "${1:-}" == "--seeds" ]]; then
    empty=$(mktemp -d)
    for t in "${ALL[@]}"; do
        rm -rf "fuzz/seeds/$t"
        ANY4_FUZZ_WRITE_SEEDS="fuzz/seeds/$t" "$BIN/$t" -runs=0 "$empty" 2>/dev/null
        echo "fuzz/seeds/$t: $(ls "fuzz/seeds/$t" | wc -l) files"
    done
    rmdir "$empty"
    exit 0
fi

SECONDS_EACH=${1:-120}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")

mkdir -p fuzz/logs
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    # The repository's real files join the generated seeds.
    case $t in
        llama_config) for m in models/*/; do cp "$m/config.json" "fuzz/corpus/$t/$(basename "$m").json"; done ;;
        tokenizer) cp models/tiny-mixtral/tokenizer.json "fuzz/corpus/$t/tiny-mixtral.json" ;;
    esac
    echo "== $t: ${SECONDS_EACH}s"
    cargo +nightly fuzz run "${BUILD[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len="${MAX_LEN[$t]}" \
        -timeout=10 -print_final_stats=1 -dict="fuzz/dicts/$t.dict" >"fuzz/logs/$t.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$')
    if [[ $rc -ne 0 ]]; then
        status=1
        echo "   FAILED (exit $rc), see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        grep -E "^(==[0-9]+== ERROR|thread .* panicked)|Test unit written" "fuzz/logs/$t.log" | head -5
    else
        echo "   ok: ${execs:-?} executions, corpus $(ls "fuzz/corpus/$t" | wc -l) files"
    fi
done
exit $status
