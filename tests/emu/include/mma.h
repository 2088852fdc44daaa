// cuda_emu (see cuda_runtime.h): the warp matrix functions (nvcuda::wmma) for 16 x 16 x 16
// tiles of bf16 or fp16 with fp32 accumulators. A fragment's layout across a warp's lanes is
// unspecified on a GPU, so code that only loads, multiplies, stores and fills fragments cannot
// depend on it: here every lane holds the whole tile. Each call is a warp barrier (a GPU needs
// the whole warp there), and loads and stores check what a GPU requires of them: a 32-byte
// aligned pointer and a leading dimension of a multiple of 16 bytes. mma_sync sums the 16
// products of each element in order, in fp32; tensor cores sum them in another order.
#pragma once
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

#include <stdint.h>

extern "C" {
#include "kernels.h" // the half conversions, the CPU backend's own
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "cuda_emu: only 16 x 16 x 16 tiles");
    float x[256]; // the tile, row-major, widened
};

static inline float emu_widen(__nv_bfloat16 h) { return sherl_bf16_to_f32(h.bits); }
static inline float emu_widen(__half h) { return sherl_f16_to_f32(h.bits); }
static inline float emu_widen(float f) { return f; }

template <class T> static inline void emu_check(const T *p, unsigned ldm, const char *what)
{
    emu::warp_barrier(0xffffffffu);
    if ((uintptr_t)p % 32 || (ldm * sizeof(T)) % 16)
        emu::kernel_fault(what);
}

// element (r, c) of a 16 x 16 tile stored with leading dimension ldm
template <class T>
static inline float emu_at(const T *p, unsigned ldm, int r, int c, bool col_major)
{
    return emu_widen(col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]);
}

template <class Use, class T, class Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p,
                                    unsigned ldm)
{
    emu_check(p, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not a "
                      "multiple of 16 bytes");
    bool col = std::is_same<Layout, col_major>::value;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.x[r * 16 + c] = emu_at(p, ldm, r, c, col);
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                                    unsigned ldm, layout_t layout)
{
    emu_check(p, ldm, "wmma::load_matrix_sync (accumulator): pointer not 32-byte aligned or ldm "
                      "not a multiple of 16 bytes");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.x[r * 16 + c] = emu_at(p, ldm, r, c, layout == mem_col_major);
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                                     unsigned ldm, layout_t layout)
{
    emu_check(p, ldm, "wmma::store_matrix_sync: pointer not 32-byte aligned or ldm not a "
                      "multiple of 16 bytes");
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            p[layout == mem_col_major ? (size_t)c * ldm + r : (size_t)r * ldm + c] = f.x[r * 16 + c];
}

template <class Use, class T, class Layout>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, float v)
{
    for (int i = 0; i < 256; i++)
        f.x[i] = v;
}

template <class T, class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c)
{
    emu::warp_barrier(0xffffffffu);
    float out[256];
    for (int r = 0; r < 16; r++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[r * 16 + j];
            for (int k = 0; k < 16; k++)
                s += a.x[r * 16 + k] * b.x[k * 16 + j];
            out[r * 16 + j] = s;
        }
    for (int i = 0; i < 256; i++)
        d.x[i] = out[i];
}
} // namespace wmma
} // namespace nvcuda
