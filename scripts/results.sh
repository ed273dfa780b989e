#!/usr/bin/env bash
# Reproduces the sb-30m rows of docs/results.md: compress with every method, then perplexity on
# wiki.test.raw at ctx 1024 (first WINDOWS windows; WINDOWS=0 scores the whole text).
# Usage: scripts/results.sh [OUT_DIR]   env: SHARED (../shared), WINDOWS (40), QAT_TOKENS (0),
#        QAT_LR (1e-3), THREADS (all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
out=${1:-results}
windows=${WINDOWS:-40}
qat_tokens=${QAT_TOKENS:-0}
qat_lr=${QAT_LR:-1e-3}
threads=${THREADS:-$(nproc)}
model=$shared/models/sb-30m
text=$shared/text/wiki.test.raw
mkdir -p "$out"

ppl() {  # name, model path
  local json
  json=$(build/subbit ppl "$2" --text "$text" --ctx 1024 --max-windows "$windows" -t "$threads" --json | tail -n 1)
  echo "$1 $json" | tee -a "$out/ppl.txt"
}

ppl bf16 "$model"
for bits in 4 3 2; do
  build/subbit compress "$model" -o "$out/rtn$bits.gguf" --method rtn --bits "$bits" -t "$threads" >/dev/null
  ppl "rtn$bits" "$out/rtn$bits.gguf"
done
build/subbit compress "$model" -o "$out/sign.gguf" --method sign -t "$threads" >/dev/null
ppl sign "$out/sign.gguf"
for bpw in 1.0 0.55 0.3 0.1; do
  build/subbit compress "$model" -o "$out/lb$bpw-ptq.gguf" --method littlebit --bpw "$bpw" -t "$threads" >/dev/null
  ppl "littlebit-$bpw-ptq" "$out/lb$bpw-ptq.gguf"
  if [ "$qat_tokens" -gt 0 ]; then
    build/subbit compress "$model" -o "$out/lb$bpw-qat.gguf" --method littlebit --bpw "$bpw" -t "$threads" \
      --train-text "$shared/text/train/corpus.txt.xz" --train-tokens "$qat_tokens" --lr "$qat_lr" \
      --seq 256 --batch 8 | tail -n 2
    ppl "littlebit-$bpw-qat" "$out/lb$bpw-qat.gguf"
  fi
done
