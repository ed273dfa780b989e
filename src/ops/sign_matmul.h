#pragma once
// Products with 1-bit sign matrices, the core of LittleBit (W ≈ diag(h)·sign(U)·diag(l)·sign(V)ᵀ·
// diag(g)) and of the plain 1-bit sign baseline.
//
// Bit layout (also the on-disk order, do not change it):
//   A sign matrix S (rows, cols) with entries ±1 is stored row-major as uint64_t words; every
//   row is padded to words_per_row = ceil(cols / 64) words. Entry (r, c) is bit (c % 64) of word
//   r * words_per_row + c / 64, least-significant bit first. Bit 1 means +1, bit 0 means −1.
//   Padding bits (c >= cols in a row's last word) are 0 and never affect results.
//   Packing maps every value that is not < 0 to +1: sign(0) = sign(−0.0) = +1 (−0.0 == 0), and
//   NaN packs as +1 too.
//
// The kernels compute y (tokens, rows) = x (tokens, cols) · Sᵀ, i.e. y[t][r] = Σ_c S[r][c]·x[t][c],
// with fp32 accumulation. The fast kernel uses Σ_c S[r][c]·x[c] = 2·Σ_{c: S[r][c]=+1} x[c] − Σ_c
// x[c], so it needs one masked add per weight; non-finite activations (±inf) may therefore give NaN
// where the reference gives ±inf.
#include <cstdint>
#include <vector>

namespace subbit {

constexpr int64_t sign_words_per_row(int64_t cols) { return (cols + 63) / 64; }

struct SignMatrix {
  const uint64_t* words;  // rows * words_per_row() words, layout above
  int64_t rows;
  int64_t cols;
  // Optional: the same signs in the lookup-table kernel's block layout (sign_blocks below), which
  // it then reads instead of `words`. Null: the kernel gathers from `words`.
  const uint32_t* blocks = nullptr;
  int64_t words_per_row() const { return sign_words_per_row(cols); }
};

// The lookup-table kernel's layout of a sign matrix, repacked once beside the file-order words
// (as ggml repacks weights for its CPU kernels): rows in groups of 16; each group's 32-column
// block b is 16 consecutive uint32, one per row, holding that row's bits of columns 32·b..32·b+31
// (bit j = column 32·b + j, the file's bit order). A tile of 16 rows then reads a block with one
// vector load instead of a 16-way gather from rows far apart (about 2x faster at one token,
// docs/roofline.md). Rows past `rows` are zero. Size: ceil(rows/16)·16 · ceil(cols/32) words.
std::vector<uint32_t> sign_blocks(const SignMatrix& s);

// values (rows, cols) row-major -> words (rows * sign_words_per_row(cols)), padding bits zeroed.
void pack_signs(const float* values, int64_t rows, int64_t cols, uint64_t* words);
// The ±1 matrix (rows, cols) row-major.
void unpack_signs(const SignMatrix& s, float* out);

// Scalings a product applies on the way in and out, so that callers with diagonal factors around
// the sign matrix (LittleBit's diag(h)·sign(U)·diag(l)·sign(V)ᵀ·diag(g)) need no scaled copies of
// their activations or outputs: at 512 tokens those copies moved more memory than the products.
//   y[t][r] = (accumulate ? y[t][r] : 0) + row_scale[r] · Σ_c S[r][c] · col_scale[c] · x[t][c]
struct SignScales {
  const float* col_scale = nullptr;  // (cols); null: all ones
  const float* row_scale = nullptr;  // (rows); null: all ones
  bool accumulate = false;           // add to y instead of overwriting it
};

// y (tokens, rows) = x (tokens, cols) · Sᵀ, scaled as `scales` says. Highway SIMD (dynamic dispatch): a lookup-table kernel
// on AVX2/AVX-512 when rows >= 64, a masked-add kernel otherwise. Multithreaded over rows and
// tokens, or over columns when there are few tokens and rows <= cols (LittleBit's first stage);
// calls under ~2·10^6 weight·token products run on the calling thread.
void sign_matmul(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                 const SignScales& scales = {});
// Below this many sign·token products a product runs on the calling thread. Waking the OpenMP
// team and one barrier cost ~4 us (Zen 5 guest, two vCPUs: 2.9 us a region, 1.3 a barrier), while
// 2^21 products take ~10-15 us on one core, so only products at least that big are split
// (LittleBit 0.1 bpw at 4096x4096, 1.3·10^6: 9 us on one thread, 13-15 on two when split).
constexpr double kSignMinParallelWork = double(1 << 21);

// Rows [row_begin, row_end) of the same product summed over the columns [col_begin, col_end)
// only (y keeps its stride of `rows`), on the calling thread: for callers that split one product,
// or several, over their own threads. row_begin, and row_end unless it is `rows`, must be
// multiples of kSignRowAlign (the lookup kernel's rows sit in the lanes of a vector); col_begin,
// and col_end unless it is `cols`, multiples of kSignColAlign (a word of bits).
constexpr int64_t kSignRowAlign = 16;
constexpr int64_t kSignColAlign = 64;
void sign_matmul_block(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                       int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end,
                       const SignScales& scales = {});
// Plain scalar reference the fast path is tested against (double accumulation, rounded to fp32).
void sign_matmul_reference(const SignMatrix& s, const float* x, float* y, int64_t tokens,
                           const SignScales& scales = {});

// The other direction, one vector: y (cols) = coeffs (rows) · S, y[c] = Σ_r coeffs[r]·S[r][c] (a
// weighted sum of the rows; LittleBit decodes one embedding row this way). Highway SIMD on the
// calling thread, 2·P − T like the products above; reads the file-order words only.
void sign_combine_rows(const SignMatrix& s, const float* coeffs, float* y);
void sign_combine_rows_reference(const SignMatrix& s, const float* coeffs, float* y);

}  // namespace subbit
