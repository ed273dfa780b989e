#!/usr/bin/env bash
# Reproduces the sb-30m tables of docs/results.md: compress with every method, then perplexity on
# wiki.test.raw at ctx 1024 over the first WINDOWS windows (0 = the whole text).
# Usage: scripts/results.sh [OUT_DIR] [ptq|sketch|ablation|bands|qat|sketch-qat]...
#   env: SHARED (../shared), WINDOWS (40), QAT_TOKENS (32768), QAT_LR (3e-3), THREADS (all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
out=${1:-results}
shift || true
parts=${*:-ptq sketch ablation bands qat sketch-qat}
windows=${WINDOWS:-40}
qat_tokens=${QAT_TOKENS:-32768}
qat_lr=${QAT_LR:-3e-3}
threads=${THREADS:-$(nproc)}
model=$shared/models/sb-30m
text=$shared/text/wiki.test.raw
calib=$shared/text/train/calib.txt
mkdir -p "$out"

ppl() {  # name, model file
  local json
  json=$(build/subbit ppl "$2" --text "$text" --ctx 1024 --max-windows "$windows" -t "$threads" --json | tail -n 1)
  echo "$1 $json" | tee -a "$out/ppl.txt"
}
compress() {  # name, options...
  local name=$1
  shift
  build/subbit compress "$model" -o "$out/$name.gguf" -t "$threads" "$@" | grep -E "^linear layers|^QAT" | tee "$out/$name.log"
  ppl "$name" "$out/$name.gguf"
}

for part in $parts; do
  case $part in
    ptq)
      ppl bf16 "$model"
      for bits in 4 3 2; do compress "rtn$bits" --method rtn --bits "$bits"; done
      compress sign --method sign
      for bpw in 1.0 0.55 0.3 0.1; do compress "littlebit-$bpw" --method littlebit --bpw "$bpw"; done
      ;;
    sketch)
      for bpw in 1.0 0.7 0.5 0.3; do compress "sketch-$bpw" --method sketch --bpw "$bpw" --calib-text "$calib"; done
      ;;
    ablation)  # sketch at 0.5 bpw, one choice changed at a time from rows 2, block 16, absminmax, no saliency
      for rule in absmaxmin mean; do compress "sketch-0.5-$rule" --method sketch --bpw 0.5 --rule "$rule" --calib-text "$calib"; done
      for rows in 1 3; do compress "sketch-0.5-rows$rows" --method sketch --bpw 0.5 --rows "$rows" --calib-text "$calib"; done
      for block in 8 32; do compress "sketch-0.5-block$block" --method sketch --bpw 0.5 --block "$block" --calib-text "$calib"; done
      compress "sketch-0.5-salient5" --method sketch --bpw 0.5 --salient-frac 0.05 --calib-text "$calib"
      ;;
    bands)  # row bands (the default) against plain hashing over whole tables, at 0.5 bpw
      compress "sketch-0.5-absmaxmin" --method sketch --bpw 0.5 --rule absmaxmin --calib-text "$calib"
      for rule in absminmax absmaxmin; do
        compress "sketch-0.5-$rule-oneband" --method sketch --bpw 0.5 --rule "$rule" --band-buckets 0 --calib-text "$calib"
      done
      ;;
    qat)
      for bpw in 0.55 0.1; do
        compress "littlebit-$bpw-qat" --method littlebit --bpw "$bpw" --train-text "$shared/text/train/corpus.txt.xz" \
          --train-tokens "$qat_tokens" --lr "$qat_lr" --seq 256 --batch 4
      done
      compress "sketch-0.5-qat" --method sketch --bpw 0.5 --calib-text "$calib" \
        --train-text "$shared/text/train/corpus.txt.xz" --train-tokens "$qat_tokens" --lr "$qat_lr" --seq 256 --batch 4
      ;;
    sketch-qat)  # the rules after training at 0.5 bpw, then the default rule at the other budgets
      for rule in absmaxmin mean; do
        compress "sketch-0.5-$rule-qat" --method sketch --bpw 0.5 --rule "$rule" --calib-text "$calib" \
          --train-text "$shared/text/train/corpus.txt.xz" --train-tokens "$qat_tokens" --lr "$qat_lr" --seq 256 --batch 4
      done
      for bpw in 1.0 0.7 0.3; do
        compress "sketch-$bpw-qat" --method sketch --bpw "$bpw" --calib-text "$calib" \
          --train-text "$shared/text/train/corpus.txt.xz" --train-tokens "$qat_tokens" --lr "$qat_lr" --seq 256 --batch 4
      done
      ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
