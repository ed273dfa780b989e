#!/usr/bin/env bash
# Reproduces the sb-30m tables of docs/results.md: compress with every method, then perplexity on
# wiki.test.raw at ctx 1024 over the first WINDOWS windows (0 = the whole text).
# Usage: scripts/results.sh [OUT_DIR] [ptq|sketch|ablation|qat|sketch-qat|sketch-ablation-qat|sketch-curve]...
#   env: SHARED (../shared), WINDOWS (40), QAT_TOKENS (32768), QAT_LR and HIDDEN_WEIGHT (unset:
#   compress's defaults), THREADS (all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
out=${1:-results}
shift || true
parts=${*:-ptq sketch ablation qat sketch-qat sketch-ablation-qat}
windows=${WINDOWS:-40}
qat_tokens=${QAT_TOKENS:-32768}
qat_options=()  # QAT options given in the environment; unset: compress's defaults
if [[ -n ${QAT_LR:-} ]]; then qat_options+=(--lr "$QAT_LR"); fi
if [[ -n ${HIDDEN_WEIGHT:-} ]]; then qat_options+=(--hidden-weight "$HIDDEN_WEIGHT"); fi
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
# The sketch tables in docs/results.md were measured with blocks of 16 weights, the default until
# 725e333 (block 32 since); every sketch run here keeps them unless it names its own block.
block16=(--block 16)
sq() {  # name, options...: sketch with QAT
  compress "$@" --method sketch --calib-text "$calib" --train-text "$shared/text/train/corpus.txt.xz" \
    --train-tokens "$qat_tokens" "${qat_options[@]}" --seq 256 --batch 4
}

for part in $parts; do
  case $part in
    ptq)
      ppl bf16 "$model"
      for bits in 4 3 2; do compress "rtn$bits" --method rtn --bits "$bits"; done
      compress sign --method sign
      for bpw in 1.0 0.55 0.3 0.1; do compress "littlebit-$bpw" --method littlebit --bpw "$bpw"; done
      ;;
    sketch)  # the default rule (absmaxmin) and the paper's (absminmax) at every budget
      for rule in absmaxmin absminmax; do
        for bpw in 1.0 0.7 0.5 0.3; do
          compress "sketch-$bpw-$rule" --method sketch --bpw "$bpw" --rule "$rule" --calib-text "$calib" \
            "${block16[@]}"
        done
      done
      ;;
    ablation)  # 0.5 bpw, one choice changed at a time from the paper's rule, rows 2, block 16, no
               # saliency, one band (plain hashing): how the ablations were run, before the
               # default changed to absmaxmin and row bands
      ab() { compress "$@" --method sketch --bpw 0.5 --band-buckets 0 --calib-text "$calib"; }
      ab sketch-0.5-mean-oneband --rule mean "${block16[@]}"
      for rows in 1 3; do ab "sketch-0.5-rows$rows" --rule absminmax --rows "$rows" "${block16[@]}"; done
      for block in 8 32; do ab "sketch-0.5-block$block" --rule absminmax --block "$block"; done
      ab sketch-0.5-salient5 --rule absminmax --salient-frac 0.05 "${block16[@]}"
      for rule in absminmax absmaxmin; do ab "sketch-0.5-$rule-oneband" --rule "$rule" "${block16[@]}"; done
      ;;
    qat)
      for bpw in 1.0 0.55 0.3 0.1; do
        compress "littlebit-$bpw-qat" --method littlebit --bpw "$bpw" --train-text "$shared/text/train/corpus.txt.xz" \
          --train-tokens "$qat_tokens" "${qat_options[@]}" --seq 256 --batch 4
      done
      ;;
    sketch-qat)  # both rules at every budget, mean at 0.5 bpw, and a second data order at 0.5 bpw
      for rule in absmaxmin absminmax; do
        for bpw in 1.0 0.7 0.5 0.3; do sq "sketch-$bpw-$rule-qat" --bpw "$bpw" --rule "$rule" "${block16[@]}"; done
        sq "sketch-0.5-$rule-qat-seed2" --bpw 0.5 --rule "$rule" --seed 2 "${block16[@]}"
      done
      sq sketch-0.5-mean-qat --bpw 0.5 --rule mean "${block16[@]}"
      ;;
    sketch-ablation-qat)  # 0.5 bpw, one choice changed at a time from the defaults (absmaxmin,
                          # rows 2, block 16, no saliency, row bands), post-training and after QAT
      for variant in "rows1 --rows 1 --block 16" "rows3 --rows 3 --block 16" "block8 --block 8" \
                     "block32 --block 32" "salient5 --salient-frac 0.05 --block 16"; do
        read -r name options <<<"$variant"
        # shellcheck disable=SC2086  # options is a list of words
        compress "sketch-0.5-$name" --method sketch --bpw 0.5 --calib-text "$calib" $options
        # shellcheck disable=SC2086
        sq "sketch-0.5-$name-qat" --bpw 0.5 $options
      done
      ;;
    sketch-curve)  # the default settings at every budget with QAT (run with a larger QAT_TOKENS)
      for bpw in 1.0 0.7 0.5 0.3; do sq "sketch-$bpw-qat$qat_tokens" --bpw "$bpw" "${block16[@]}"; done
      ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
