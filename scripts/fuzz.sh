#!/usr/bin/env bash
# Builds the libFuzzer targets with ASan + UBSan (clang-14) in build-asan and runs them
# (docs/fuzzing.md). Usage:
#   scripts/fuzz.sh build [CMAKE ARGS...]   configure, build every target and the unit tests
#   scripts/fuzz.sh run TARGET [ARGS...]    fuzz one target (extra libFuzzer flags, e.g. -runs=1000000)
#   scripts/fuzz.sh smoke SECONDS           every target for SECONDS each, from the committed corpora
#   scripts/fuzz.sh ci                      what .ci/run adds: build, the unit tests under the
#                                           sanitizers (runtime suite), smoke 20
# New inputs go to build-asan/corpus/TARGET (the committed seeds in fuzz/corpus stay as they are);
# crashes to build-asan/artifacts. SUBBIT_FUZZ_BUILD overrides the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SUBBIT_FUZZ_BUILD:-build-asan}
targets=(safetensors safetensors_index gguf config tokenizer_json model_file encode_byte_level
         encode_sentencepiece chat_template server_request)

configure_and_build() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
        -DSUBBIT_WITH_TORCH=OFF -DSUBBIT_BUILD_BENCH=OFF -DSUBBIT_SANITIZE=ON -DSUBBIT_FUZZ=ON \
        "$@" >/dev/null
  cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}" subbit_tests
}

# -rss_limit_mb: an input that makes a parser allocate beyond this is a finding (parsers must
# refuse absurd sizes before allocating); -timeout: seconds per input, beyond which it is a hang.
fuzz_one() {
  local target=$1
  shift
  mkdir -p "$build/corpus/$target" "$build/artifacts"
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$build/fuzz/fuzz_$target" -dict=fuzz/subbit.dict -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout=10 -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" \
    "$@" "$build/corpus/$target" "fuzz/corpus/$target"
}

case ${1:-} in
  build) shift; configure_and_build "$@" ;;
  run) shift; fuzz_one "$@" ;;
  smoke)
    seconds=${2:-20}
    for target in "${targets[@]}"; do
      log="$build/smoke-$target.log"
      if ! fuzz_one "$target" -max_total_time="$seconds" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz_$target: finding (input saved in $build/artifacts)"
        exit 1
      fi
      echo "fuzz_$target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)"
    done
    ;;
  ci)
    configure_and_build
    # The two whole-text perplexities of wiki.test.raw take ~10 minutes each without sanitizers
    # (the Release suite runs them); under ASan they would not fit CI's time.
    ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -E 'wiki_test_raw'
    "$0" smoke 20
    ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
