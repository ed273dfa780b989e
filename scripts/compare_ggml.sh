#!/usr/bin/env bash
# Matrix products side by side: ggml's CPU backend (test-backend-ops perf, MUL_MAT) and subbit_bench,
# one after the other on this machine, with 1 and 2 threads, for the shapes of bench/bench_gemv.cpp
# and n = 1, 8, 512 tokens. Prints one markdown table per thread count
# (microseconds per product). ggml is a measurement peer only: nothing of it enters subbit.
#
#   [ROUNDS=R] [TOKENS="1 8 512"] scripts/compare_ggml.sh GGML [SCRATCH]
#
# ROUNDS (default 1): run both R times, alternating, and print each cell's median over the
# rounds and each ratio's median with its range (on a noisy shared machine one round can be 30%
# off). TOKENS: the n to measure (default 1, 8 and 512).
#
# GGML: a ggml-org/ggml checkout or a git directory of one (its HEAD is exported). SCRATCH (default
# /tmp/subbit-ggml) receives the copy, patched in two places: the perf list gets our shapes, and
# the thread count comes from GGML_BENCH_THREADS instead of every core. The build uses
# -DGGML_NATIVE=ON. subbit_bench must be built already (build/subbit_bench, Release); it runs with
# the OpenMP waiting the `subbit` program uses (a 3,000-round spin, src/cli/omp_policy.h), ggml with
# its own thread pool.
set -euo pipefail
cd "$(dirname "$0")/.."
ggml=${1:?usage: scripts/compare_ggml.sh GGML_CHECKOUT_OR_GIT_DIR [SCRATCH]}
scratch=${2:-/tmp/subbit-ggml}
bench=build/subbit_bench
[ -x "$bench" ] || { echo "error: $bench: not built (cmake --build build --target subbit_bench)" >&2; exit 1; }

# Our shapes, as subbit_bench lists them (bench/bench_gemv.cpp kShapes: Llama-2-7B's, a 70B-class
# MLP and Llama-3.2-1B's), as "{rows, k}, ..." for ggml's perf list and as alternatives for its
# -p filter. A scratch copy patched with another list is replaced.
read -r -a shapes <<<"$("$bench" --benchmark_list_tests --benchmark_filter='^gemv/[^/]*/dense_bf16/real_time$' |
  sed -E 's|^gemv/([0-9]+)x([0-9]+)/.*|\1x\2|' | tr '\n' ' ')"
[ "${#shapes[@]}" -gt 0 ] || { echo "error: $bench lists no gemv/<shape>/dense_bf16 benchmark" >&2; exit 1; }
shape_list=$(printf '{%s}, ' "${shapes[@]/x/, }")
shape_list=${shape_list%, }
alternatives() { printf '%s\n' "$@" | sort -un | paste -sd '|'; }
mkdir -p "$scratch"
if ! grep -qF "$shape_list" "$scratch/src/tests/test-backend-ops.cpp" 2>/dev/null; then
  rm -rf "$scratch/src" && mkdir -p "$scratch/src"
  if [ -f "$ggml/CMakeLists.txt" ]; then
    cp -r "$ggml/." "$scratch/src"
  else
    git --git-dir="$ggml" archive HEAD | tar -x -C "$scratch/src"
  fi
  python3 - "$scratch/src/tests/test-backend-ops.cpp" "$shape_list" <<'EOF'
import sys
path, shape_list = sys.argv[1], sys.argv[2]
src = open(path).read()
threads = "#   define N_THREADS std::thread::hardware_concurrency()"
assert threads in src, "test-backend-ops.cpp: N_THREADS definition not found"
src = src.replace(threads, "#   define N_THREADS (getenv(\"GGML_BENCH_THREADS\") ? "
                  "(unsigned) atoi(getenv(\"GGML_BENCH_THREADS\")) : std::thread::hardware_concurrency())")
anchor = "static std::vector<std::unique_ptr<test_case>> make_test_cases_perf() {\n" \
         "    std::vector<std::unique_ptr<test_case>> test_cases;\n"
assert anchor in src, "test-backend-ops.cpp: make_test_cases_perf not found"
ours = """
    // subbit's GEMV shapes (out x in), added by scripts/compare_ggml.sh
    for (auto [m, k] : std::vector<std::pair<int64_t, int64_t>>{SHAPES})
        for (int64_t n : {1, 8, 512})
            for (ggml_type t : {GGML_TYPE_BF16, GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_TQ2_0, GGML_TYPE_Q1_0})
                test_cases.emplace_back(new test_mul_mat(t, GGML_TYPE_F32, m, n, k, {1, 1}, {1, 1}));
"""
open(path, "w").write(src.replace(anchor, anchor + ours.replace("SHAPES", shape_list)))
EOF
fi
cmake -S "$scratch/src" -B "$scratch/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DGGML_BUILD_EXAMPLES=OFF -DGGML_BUILD_TESTS=ON >/dev/null
cmake --build "$scratch/build" --target test-backend-ops -j "$(nproc)" >/dev/null
ggml_bin=$(find "$scratch/build" -name test-backend-ops -type f -perm -u+x | head -n 1)

out=$(mktemp -d)
rounds=${ROUNDS:-1}
read -r -a tokens <<<"${TOKENS:-1 8 512}"
ns=$(IFS='|'; echo "${tokens[*]}")
ggml_filter="m=($(alternatives "${shapes[@]%x*}")),n=($ns),k=($(alternatives "${shapes[@]#*x}")),"
filters=()
for n in "${tokens[@]}"; do
  if [ "$n" = 1 ]; then filters+=("gemv/[^/]*"); else filters+=("gemm/[^/]*/n$n"); fi
done
subbit_filter="^($(IFS='|'; echo "${filters[*]}"))/(dense_bf16|littlebit_.*|sketch_bpw0.50)/real_time$"
for round in $(seq "$rounds"); do
  for threads in 1 2; do
    echo "round $round, threads $threads: ggml ($ggml_bin)" >&2
    GGML_BENCH_THREADS=$threads "$ggml_bin" perf -o MUL_MAT -b CPU -p "$ggml_filter" \
      >"$out/ggml_t${threads}_r$round.txt"
    echo "round $round, threads $threads: subbit ($bench)" >&2
    OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=3000 "$bench" \
      --benchmark_filter="$subbit_filter" \
      --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_min_time=0.2 \
      --benchmark_format=json >"$out/subbit_t${threads}_r$round.json"
  done
done
python3 scripts/compare_ggml_table.py "$out"
echo "raw outputs: $out" >&2
