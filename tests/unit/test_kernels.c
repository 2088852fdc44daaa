/* Every op of every available backend against a plain double-precision reference loop, and
 * every backward op against central finite differences of that reference.
 *
 * Backward ops accumulate: each gradient buffer starts with random values g0 and the test
 * checks (result - g0) against the numerical gradient of L = sum(dout . f(x)). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "kernels.h"

/* ---------------------------------------------------------------------------------------
 * helpers */

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) /* [0,1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float *randv(size_t n, double scale)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((2.0 * urand() - 1.0) * scale);
    return v;
}
static double *to_d(const float *v, size_t n)
{
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
    return d;
}
/* Device copies so the same test body runs on any backend. */
static float *dev_f(const sherl_backend *be, const float *h, size_t n)
{
    float *d = be->alloc(n * sizeof(float));
    be->copy_to_device(d, h, n * sizeof(float));
    return d;
}
static int32_t *dev_i(const sherl_backend *be, const int32_t *h, size_t n)
{
    int32_t *d = be->alloc(n * sizeof(int32_t));
    be->copy_to_device(d, h, n * sizeof(int32_t));
    return d;
}
static void back_f(const sherl_backend *be, float *h, const float *d, size_t n)
{
    be->synchronize();
    be->copy_to_host(h, d, n * sizeof(float));
}

/* max |got - want| / (atol + rtol |want|) must stay <= 1 */
static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double atol, double rtol)
{
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]) / (atol + rtol * fabs(want[i]));
        if (!(e <= worst)) { /* catches NaN too */
            worst = e;
            wi = i;
            if (isnan(e))
                break;
        }
    }
    cr_expect(worst <= 1.0, "%s: element %zu got %.9g want %.9g (atol %g rtol %g)", what, wi,
              (double)got[wi], want[wi], atol, rtol);
}

/* Numerical gradient of loss(x) wrt x[0..n) by central differences in double. */
typedef double (*loss_fn)(void *ctx);
static void fd_grad(double *grad, double *x, size_t n, loss_fn loss, void *ctx)
{
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        double h = 1e-6 * fmax(1.0, fabs(x0));
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        grad[i] = (lp - lm) / (2 * h);
    }
}

/* Checks an accumulated float gradient: (after - before) vs fd. */
static void expect_grad(const char *what, const float *after, const float *before,
                        const double *fd, size_t n)
{
    float *delta = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        delta[i] = after[i] - before[i];
    expect_close(what, delta, fd, n, 2e-4, 2e-3);
    free(delta);
}

#define FOR_EACH_BACKEND(be)                                                          \
    const sherl_backend *backends_[2] = {sherl_backend_cpu(), sherl_backend_cuda()};  \
    for (int bi_ = 0; bi_ < 2; bi_++)                                                 \
        for (const sherl_backend *be = backends_[bi_]; be; be = NULL)

static double dot_d(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---------------------------------------------------------------------------------------
 * gemm */

static void ref_gemm(int ta, int tb, int M, int N, int K, double alpha, const double *A, int lda,
                     const double *B, int ldb, double beta, double *C, int ldc)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (ta ? A[k * lda + m] : A[m * lda + k]) * (tb ? B[n * ldb + k] : B[k * ldb + n]);
            C[m * ldc + n] = alpha * s + beta * C[m * ldc + n];
        }
}

Test(kernels, gemm_all_transposes)
{
    FOR_EACH_BACKEND(be)
    {
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int M = 7, N = 5, K = 9;
                int lda = ta ? M + 2 : K + 1, ldb = tb ? K + 3 : N + 1, ldc = N + 2;
                size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
                       nc = (size_t)M * ldc;
                float *A = randv(na, 1), *B = randv(nb, 1), *C = randv(nc, 1);
                double *Ad = to_d(A, na), *Bd = to_d(B, nb), *Cd = to_d(C, nc);
                ref_gemm(ta, tb, M, N, K, 0.7, Ad, lda, Bd, ldb, 1.5, Cd, ldc);
                float *dA = dev_f(be, A, na), *dB = dev_f(be, B, nb), *dC = dev_f(be, C, nc);
                be->gemm(ta, tb, M, N, K, 0.7f, dA, lda, dB, ldb, 1.5f, dC, ldc);
                back_f(be, C, dC, nc);
                expect_close(be->name, C, Cd, nc, 1e-5, 1e-5);
                /* batched: two copies side by side must give the same answer twice */
                float *A2 = malloc(2 * na * sizeof(float)), *B2 = malloc(2 * nb * sizeof(float));
                memcpy(A2, A, na * 4), memcpy(A2 + na, A, na * 4);
                memcpy(B2, B, nb * 4), memcpy(B2 + nb, B, nb * 4);
                float *dA2 = dev_f(be, A2, 2 * na), *dB2 = dev_f(be, B2, 2 * nb);
                float *dC2 = be->alloc(2 * nc * sizeof(float));
                be->gemm_strided_batched(ta, tb, M, N, K, 1.0f, dA2, lda, na, dB2, ldb, nb, 0.0f,
                                         dC2, ldc, nc, 2);
                float *C2 = malloc(2 * nc * sizeof(float));
                back_f(be, C2, dC2, 2 * nc);
                double *ref = calloc(nc, sizeof(double));
                ref_gemm(ta, tb, M, N, K, 1.0, Ad, lda, Bd, ldb, 0.0, ref, ldc);
                for (int m = 0; m < M; m++)
                    for (int n = N; n < ldc; n++)
                        ref[m * ldc + n] = 0.0; /* padding columns untouched (zeroed alloc) */
                expect_close("batched[0]", C2, ref, nc, 1e-5, 1e-5);
                expect_close("batched[1]", C2 + nc, ref, nc, 1e-5, 1e-5);
                be->free(dA), be->free(dB), be->free(dC), be->free(dA2), be->free(dB2),
                    be->free(dC2);
                free(A), free(B), free(C), free(Ad), free(Bd), free(Cd), free(A2), free(B2),
                    free(C2), free(ref);
            }
    }
}

/* Whether element i of a buffer of `stride`-apart [rows x ld] matrices lies inside one of the
 * rows x cols blocks (not in the ld padding of a row nor in the gap between matrices). */
static int in_block(size_t i, long long stride, int ld, int rows, int cols)
{
    size_t off = i % (size_t)stride;
    return off < (size_t)rows * ld && (int)(off % (size_t)ld) < cols;
}

/* Elements outside the blocks must come back bit for bit as they went in. */
static void expect_outside_unchanged(const char *what, const float *after, const float *before,
                                     size_t n, long long stride, int ld, int rows, int cols)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!in_block(i, stride, ld, rows, cols) && memcmp(&after[i], &before[i], sizeof(float))) {
            if (!bad++)
                first = i;
        }
    cr_expect(bad == 0, "%s: %zu padding elements written, first %zu: %.9g was %.9g", what, bad,
              first, bad ? (double)after[first] : 0.0, bad ? (double)before[first] : 0.0);
}

/* Bit-for-bit equality of two float arrays. */
static void expect_same(const char *what, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float))) {
            cr_expect(0, "%s: element %zu is %.9g, want exactly %.9g", what, i, (double)got[i],
                      (double)want[i]);
            return;
        }
}

static uint16_t *dev_u16(const sherl_backend *be, const uint16_t *h, size_t n)
{
    uint16_t *d = be->alloc(n * sizeof(uint16_t));
    be->copy_to_device(d, h, n * sizeof(uint16_t));
    return d;
}

/* Batches of half operands (bf16 and fp16) with every transpose pair, leading dimensions and
 * strides beyond the minimum, accumulating into a non-zero C. The operands' padding holds NaN,
 * so a product that reads outside its matrices shows; the reference is the double product of
 * the widened half values (exact in fp32, so only the fp32 accumulation may differ). */
Test(kernels, gemm_half_strided_batched)
{
    FOR_EACH_BACKEND(be)
    {
        for (int f16 = 0; f16 < 2; f16++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++) {
                    const int M = 5, N = 6, K = 7, batch = 3;
                    const float alpha = 0.75f, beta = 1.0f;
                    int ra = ta ? K : M, ca = ta ? M : K; /* A as stored: ra rows of ca */
                    int rb = tb ? N : K, cb = tb ? K : N;
                    int lda = ca + 3, ldb = cb + 2, ldc = N + 4;
                    long long sa = (long long)ra * lda + 5, sb = (long long)rb * ldb + 9,
                              sc = (long long)M * ldc + 6;
                    size_t na = (size_t)sa * batch, nb = (size_t)sb * batch,
                           nc = (size_t)sc * batch;
                    uint16_t nan_h = f16 ? 0x7e00u : 0x7fc0u;
                    uint16_t *A = malloc(na * sizeof(uint16_t));
                    uint16_t *B = malloc(nb * sizeof(uint16_t));
                    double *Ad = calloc(na, sizeof(double)), *Bd = calloc(nb, sizeof(double));
                    float *fa = randv(na, 1), *fb = randv(nb, 1);
                    for (size_t i = 0; i < na; i++) {
                        A[i] = !in_block(i, sa, lda, ra, ca) ? nan_h
                               : f16                         ? sherl_f32_to_f16(fa[i])
                                                             : sherl_f32_to_bf16(fa[i]);
                        if (in_block(i, sa, lda, ra, ca))
                            Ad[i] = f16 ? sherl_f16_to_f32(A[i]) : sherl_bf16_to_f32(A[i]);
                    }
                    for (size_t i = 0; i < nb; i++) {
                        B[i] = !in_block(i, sb, ldb, rb, cb) ? nan_h
                               : f16                         ? sherl_f32_to_f16(fb[i])
                                                             : sherl_f32_to_bf16(fb[i]);
                        if (in_block(i, sb, ldb, rb, cb))
                            Bd[i] = f16 ? sherl_f16_to_f32(B[i]) : sherl_bf16_to_f32(B[i]);
                    }
                    float *C0 = randv(nc, 1), *C = malloc(nc * sizeof(float));
                    double *Cd = to_d(C0, nc);
                    for (int i = 0; i < batch; i++)
                        ref_gemm(ta, tb, M, N, K, alpha, Ad + i * sa, lda, Bd + i * sb, ldb, beta,
                                 Cd + i * sc, ldc);
                    uint16_t *dA = dev_u16(be, A, na), *dB = dev_u16(be, B, nb);
                    float *dC = dev_f(be, C0, nc);
                    if (f16)
                        be->gemm_f16_strided_batched(ta, tb, M, N, K, alpha, dA, lda, sa, dB, ldb,
                                                     sb, beta, dC, ldc, sc, batch);
                    else
                        be->gemm_bf16_strided_batched(ta, tb, M, N, K, alpha, dA, lda, sa, dB,
                                                      ldb, sb, beta, dC, ldc, sc, batch);
                    back_f(be, C, dC, nc);
                    char what[96];
                    snprintf(what, sizeof what, "%s gemm_%s_strided_batched ta=%d tb=%d",
                             be->name, f16 ? "f16" : "bf16", ta, tb);
                    expect_close(what, C, Cd, nc, 1e-5, 1e-5);
                    expect_outside_unchanged(what, C, C0, nc, sc, ldc, M, N);
                    be->free(dA), be->free(dB), be->free(dC);
                    free(A), free(B), free(Ad), free(Bd), free(fa), free(fb), free(C0), free(C),
                        free(Cd);
                }
    }
}

/* ---------------------------------------------------------------------------------------
 * Linear (matmul + bias) */

typedef struct {
    int N, C, OC;
    double *x, *w, *b, *dout;
} lin_ctx;

static void ref_linear(double *out, const lin_ctx *c)
{
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->b ? c->b[o] : 0;
            for (int k = 0; k < c->C; k++)
                s += c->x[n * c->C + k] * c->w[o * c->C + k];
            out[n * c->OC + o] = s;
        }
}
static double lin_loss(void *p)
{
    lin_ctx *c = p;
    double *out = malloc(sizeof(double) * c->N * c->OC);
    ref_linear(out, c);
    double l = dot_d(out, c->dout, (size_t)c->N * c->OC);
    free(out);
    return l;
}

Test(kernels, matmul_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int N = 6, C = 5, OC = 4;
        float *x = randv(N * C, 1), *w = randv(OC * C, 1), *b = randv(OC, 1),
              *dout = randv(N * OC, 1);
        lin_ctx c = {N, C, OC, to_d(x, N * C), to_d(w, OC * C), to_d(b, OC), to_d(dout, N * OC)};
        double *ref = malloc(sizeof(double) * N * OC);
        ref_linear(ref, &c);
        float *dx = dev_f(be, x, N * C), *dw = dev_f(be, w, OC * C), *db = dev_f(be, b, OC);
        float *dy = be->alloc(sizeof(float) * N * OC);
        be->matmul_forward(dy, dx, dw, db, N, C, OC);
        float *y = malloc(sizeof(float) * N * OC);
        back_f(be, y, dy, N * OC);
        expect_close("matmul_forward", y, ref, N * OC, 1e-5, 1e-5);
        /* without bias */
        be->matmul_forward(dy, dx, dw, NULL, N, C, OC);
        back_f(be, y, dy, N * OC);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                ref[n * OC + o] -= c.b[o];
        expect_close("matmul_forward no bias", y, ref, N * OC, 1e-5, 1e-5);

        float *g0x = randv(N * C, 1), *g0w = randv(OC * C, 1), *g0b = randv(OC, 1);
        float *gx = dev_f(be, g0x, N * C), *gw = dev_f(be, g0w, OC * C), *gb = dev_f(be, g0b, OC);
        float *ddout = dev_f(be, dout, N * OC);
        be->matmul_backward(gx, gw, gb, ddout, dx, dw, N, C, OC);
        float *hx = malloc(4 * N * C), *hw = malloc(4 * OC * C), *hb = malloc(4 * OC);
        back_f(be, hx, gx, N * C), back_f(be, hw, gw, OC * C), back_f(be, hb, gb, OC);
        double *fx = malloc(8 * N * C), *fw = malloc(8 * OC * C), *fb = malloc(8 * OC);
        fd_grad(fx, c.x, N * C, lin_loss, &c);
        fd_grad(fw, c.w, OC * C, lin_loss, &c);
        fd_grad(fb, c.b, OC, lin_loss, &c);
        expect_grad("matmul dinp", hx, g0x, fx, N * C);
        expect_grad("matmul dweight", hw, g0w, fw, OC * C);
        expect_grad("matmul dbias", hb, g0b, fb, OC);
        /* NULL gradients are skipped (frozen weights) */
        be->matmul_backward(NULL, NULL, gb, ddout, dx, dw, N, C, OC);
        be->free(dx), be->free(dw), be->free(db), be->free(dy), be->free(gx), be->free(gw),
            be->free(gb), be->free(ddout);
        free(x), free(w), free(b), free(dout), free(ref), free(y), free(g0x), free(g0w),
            free(g0b), free(hx), free(hw), free(hb), free(fx), free(fw), free(fb);
        free(c.x), free(c.w), free(c.b), free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * bias add */

typedef struct {
    int N, C;
    double *x, *b, *dout;
} bias_ctx;
static double bias_loss(void *p)
{
    bias_ctx *c = p;
    double l = 0;
    for (int n = 0; n < c->N; n++)
        for (int k = 0; k < c->C; k++)
            l += (c->x[n * c->C + k] + c->b[k]) * c->dout[n * c->C + k];
    return l;
}

Test(kernels, bias_add)
{
    FOR_EACH_BACKEND(be)
    {
        int N = 5, C = 7;
        float *x = randv(N * C, 1), *b = randv(C, 1), *dout = randv(N * C, 1);
        bias_ctx c = {N, C, to_d(x, N * C), to_d(b, C), to_d(dout, N * C)};
        double *ref = malloc(8 * N * C);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < C; k++)
                ref[n * C + k] = c.x[n * C + k] + c.b[k];
        float *dx = dev_f(be, x, N * C), *db = dev_f(be, b, C);
        be->bias_add_forward(dx, db, N, C);
        back_f(be, x, dx, N * C);
        expect_close("bias_add_forward", x, ref, N * C, 1e-6, 1e-6);
        float *g0 = randv(C, 1), *g = dev_f(be, g0, C), *dd = dev_f(be, dout, N * C);
        be->bias_add_backward(g, dd, N, C);
        float *h = malloc(4 * C);
        back_f(be, h, g, C);
        double *fd = malloc(8 * C);
        fd_grad(fd, c.b, C, bias_loss, &c);
        expect_grad("bias_add_backward", h, g0, fd, C);
        be->free(dx), be->free(db), be->free(g), be->free(dd);
        free(x), free(b), free(dout), free(ref), free(g0), free(h), free(fd), free(c.x),
            free(c.b), free(c.dout);
    }
}

/* G groups of [N,C], each with its own bias row bias_stride apart; the padding between rows
 * holds garbage that must neither reach the output nor be written by the backward. */
Test(kernels, bias_add_grouped)
{
    FOR_EACH_BACKEND(be)
    {
        const int G = 3, N = 5, C = 7;
        const long long S = 16;
        size_t nx = (size_t)G * N * C, nb = (size_t)G * S;
        float *x = randv(nx, 1), *b = randv(nb, 1), *dout = randv(nx, 1);
        for (size_t i = 0; i < nb; i++)
            if (!in_block(i, S, (int)S, 1, C))
                b[i] = 1000.0f + (float)i; /* garbage padding */
        double *ref = malloc(8 * nx);
        for (int g = 0; g < G; g++)
            for (int n = 0; n < N; n++)
                for (int k = 0; k < C; k++) {
                    size_t i = ((size_t)g * N + n) * C + k;
                    ref[i] = (double)x[i] + b[g * S + k];
                }
        float *dx = dev_f(be, x, nx), *db = dev_f(be, b, nb);
        be->bias_add_grouped_forward(dx, db, S, G, N, C);
        float *y = malloc(4 * nx);
        back_f(be, y, dx, nx);
        expect_close("bias_add_grouped_forward", y, ref, nx, 1e-6, 1e-6);

        /* backward: dbias[g*S + c] += sum_n dout[g,n,c], padding untouched */
        float *g0 = randv(nb, 1), *gd = dev_f(be, g0, nb), *dd = dev_f(be, dout, nx);
        be->bias_add_grouped_backward(gd, S, dd, G, N, C);
        float *h = malloc(4 * nb);
        back_f(be, h, gd, nb);
        double *want = to_d(g0, nb);
        for (int g = 0; g < G; g++)
            for (int k = 0; k < C; k++) {
                double s = 0;
                for (int n = 0; n < N; n++)
                    s += dout[((size_t)g * N + n) * C + k];
                want[g * S + k] += s;
            }
        expect_close("bias_add_grouped_backward", h, want, nb, 1e-5, 1e-5);
        expect_outside_unchanged("bias_add_grouped_backward padding", h, g0, nb, S, (int)S, 1, C);
        be->free(dx), be->free(db), be->free(gd), be->free(dd);
        free(x), free(b), free(dout), free(ref), free(y), free(g0), free(h), free(want);
    }
}

/* ---------------------------------------------------------------------------------------
 * LayerNorm */

typedef struct {
    int N, C;
    double eps;
    double *x, *w, *b, *dout;
} ln_ctx;
static void ref_layernorm(double *out, const ln_ctx *c)
{
    for (int n = 0; n < c->N; n++) {
        const double *x = c->x + n * c->C;
        double m = 0, v = 0;
        for (int k = 0; k < c->C; k++)
            m += x[k];
        m /= c->C;
        for (int k = 0; k < c->C; k++)
            v += (x[k] - m) * (x[k] - m);
        v /= c->C;
        for (int k = 0; k < c->C; k++)
            out[n * c->C + k] = (x[k] - m) / sqrt(v + c->eps) * c->w[k] + c->b[k];
    }
}
static double ln_loss(void *p)
{
    ln_ctx *c = p;
    double *out = malloc(8 * c->N * c->C);
    ref_layernorm(out, c);
    double l = dot_d(out, c->dout, (size_t)c->N * c->C);
    free(out);
    return l;
}

Test(kernels, layernorm_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int N = 4, C = 9;
        float *x = randv(N * C, 2), *w = randv(C, 1), *b = randv(C, 1), *dout = randv(N * C, 1);
        for (int k = 0; k < C; k++) /* an offset row: mean far from 0 */
            x[k] += 5.0f;
        ln_ctx c = {N, C, 1e-5, to_d(x, N * C), to_d(w, C), to_d(b, C), to_d(dout, N * C)};
        double *ref = malloc(8 * N * C);
        ref_layernorm(ref, &c);
        float *dx = dev_f(be, x, N * C), *dw = dev_f(be, w, C), *db = dev_f(be, b, C);
        float *dy = be->alloc(4 * N * C), *mean = be->alloc(4 * N), *rstd = be->alloc(4 * N);
        be->layernorm_forward(dy, mean, rstd, dx, dw, db, N, C, 1e-5f);
        float *y = malloc(4 * N * C);
        back_f(be, y, dy, N * C);
        expect_close("layernorm_forward", y, ref, N * C, 1e-5, 1e-5);

        float *g0x = randv(N * C, 1), *g0w = randv(C, 1), *g0b = randv(C, 1);
        float *gx = dev_f(be, g0x, N * C), *gw = dev_f(be, g0w, C), *gb = dev_f(be, g0b, C);
        float *dd = dev_f(be, dout, N * C);
        be->layernorm_backward(gx, gw, gb, dd, dx, dw, mean, rstd, N, C);
        float *hx = malloc(4 * N * C), *hw = malloc(4 * C), *hb = malloc(4 * C);
        back_f(be, hx, gx, N * C), back_f(be, hw, gw, C), back_f(be, hb, gb, C);
        double *fx = malloc(8 * N * C), *fw = malloc(8 * C), *fb = malloc(8 * C);
        fd_grad(fx, c.x, N * C, ln_loss, &c);
        fd_grad(fw, c.w, C, ln_loss, &c);
        fd_grad(fb, c.b, C, ln_loss, &c);
        expect_grad("layernorm dinp", hx, g0x, fx, N * C);
        expect_grad("layernorm dweight", hw, g0w, fw, C);
        expect_grad("layernorm dbias", hb, g0b, fb, C);
        be->free(dx), be->free(dw), be->free(db), be->free(dy), be->free(mean), be->free(rstd),
            be->free(gx), be->free(gw), be->free(gb), be->free(dd);
        free(x), free(w), free(b), free(dout), free(ref), free(y), free(g0x), free(g0w),
            free(g0b), free(hx), free(hw), free(hb), free(fx), free(fw), free(fb), free(c.x),
            free(c.w), free(c.b), free(c.dout);
    }
}

/* G independent LayerNorms over [G,N,C]: weight/bias of group g at g * param_stride, its
 * statistics at mean/rstd + g * stat_stride. Every group has its own parameters and an offset
 * row; each group's results are the ungrouped op's on that group alone. */
Test(kernels, layernorm_grouped_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        const int G = 3, N = 4, C = 9;
        const long long PS = 16, SS = N + 3;
        const size_t nx = (size_t)G * N * C, np = (size_t)G * PS, ns = (size_t)G * SS,
                     gx = (size_t)N * C;
        float *x = randv(nx, 2), *w = randv(np, 1), *b = randv(np, 1), *dout = randv(nx, 1);
        for (int g = 0; g < G; g++)
            for (int k = 0; k < C; k++) /* an offset row per group: mean far from 0 */
                x[g * gx + (size_t)(g % N) * C + k] += 5.0f + g;
        for (size_t i = 0; i < np; i++)
            if (!in_block(i, PS, (int)PS, 1, C))
                w[i] = 1000.0f + (float)i, b[i] = -1000.0f - (float)i; /* garbage padding */
        float *m0 = randv(ns, 1), *r0 = randv(ns, 1); /* statistics' initial garbage */

        float *dx = dev_f(be, x, nx), *dw = dev_f(be, w, np), *db = dev_f(be, b, np);
        float *dy = be->alloc(4 * nx), *dmean = dev_f(be, m0, ns), *drstd = dev_f(be, r0, ns);
        be->layernorm_grouped_forward(dy, dmean, drstd, SS, dx, dw, db, PS, G, N, C, 1e-5f);
        float *y = malloc(4 * nx), *mean = malloc(4 * ns), *rstd = malloc(4 * ns);
        back_f(be, y, dy, nx), back_f(be, mean, dmean, ns), back_f(be, rstd, drstd, ns);
        expect_outside_unchanged("layernorm_grouped_forward mean padding", mean, m0, ns, SS,
                                 (int)SS, 1, N);
        expect_outside_unchanged("layernorm_grouped_forward rstd padding", rstd, r0, ns, SS,
                                 (int)SS, 1, N);

        /* without statistics: the same output */
        float *dy2 = be->alloc(4 * nx), *y2 = malloc(4 * nx);
        be->layernorm_grouped_forward(dy2, NULL, NULL, SS, dx, dw, db, PS, G, N, C, 1e-5f);
        back_f(be, y2, dy2, nx);
        expect_same("layernorm_grouped_forward out without mean/rstd", y2, y, nx);

        /* backward, accumulating into non-zero gradients (parameter padding included) */
        float *g0x = randv(nx, 1), *g0w = randv(np, 1), *g0b = randv(np, 1);
        float *gxd = dev_f(be, g0x, nx), *gwd = dev_f(be, g0w, np), *gbd = dev_f(be, g0b, np);
        float *dd = dev_f(be, dout, nx);
        be->layernorm_grouped_backward(gxd, gwd, gbd, PS, dd, dx, dw, dmean, drstd, SS, G, N, C);
        float *hx = malloc(4 * nx), *hw = malloc(4 * np), *hb = malloc(4 * np);
        back_f(be, hx, gxd, nx), back_f(be, hw, gwd, np), back_f(be, hb, gbd, np);
        expect_outside_unchanged("layernorm_grouped_backward dweight padding", hw, g0w, np, PS,
                                 (int)PS, 1, C);
        expect_outside_unchanged("layernorm_grouped_backward dbias padding", hb, g0b, np, PS,
                                 (int)PS, 1, C);

        for (int g = 0; g < G; g++) {
            char what[96];
            ln_ctx c = {N, C, 1e-5, to_d(x + g * gx, gx), to_d(w + g * PS, C),
                        to_d(b + g * PS, C), to_d(dout + g * gx, gx)};
            double *ref = malloc(8 * gx);
            ref_layernorm(ref, &c);
            snprintf(what, sizeof what, "layernorm_grouped_forward group %d", g);
            expect_close(what, y + g * gx, ref, gx, 1e-5, 1e-5);

            /* the ungrouped op on this group alone: the same statistics and output, bit for bit */
            float *ux = dev_f(be, x + g * gx, gx), *uw = dev_f(be, w + g * PS, C),
                  *ub = dev_f(be, b + g * PS, C);
            float *uy = be->alloc(4 * gx), *um = be->alloc(4 * N), *ur = be->alloc(4 * N);
            be->layernorm_forward(uy, um, ur, ux, uw, ub, N, C, 1e-5f);
            float *hy = malloc(4 * gx), *hm = malloc(4 * N), *hr = malloc(4 * N);
            back_f(be, hy, uy, gx), back_f(be, hm, um, N), back_f(be, hr, ur, N);
            snprintf(what, sizeof what, "layernorm_grouped_forward group %d mean", g);
            expect_same(what, mean + g * SS, hm, N);
            snprintf(what, sizeof what, "layernorm_grouped_forward group %d rstd", g);
            expect_same(what, rstd + g * SS, hr, N);
            snprintf(what, sizeof what, "layernorm_grouped_forward group %d out", g);
            expect_same(what, y + g * gx, hy, gx);

            double *fx = malloc(8 * gx), *fw = malloc(8 * C), *fb = malloc(8 * C);
            fd_grad(fx, c.x, gx, ln_loss, &c);
            fd_grad(fw, c.w, C, ln_loss, &c);
            fd_grad(fb, c.b, C, ln_loss, &c);
            snprintf(what, sizeof what, "layernorm_grouped dinp group %d", g);
            expect_grad(what, hx + g * gx, g0x + g * gx, fx, gx);
            snprintf(what, sizeof what, "layernorm_grouped dweight group %d", g);
            expect_grad(what, hw + g * PS, g0w + g * PS, fw, C);
            snprintf(what, sizeof what, "layernorm_grouped dbias group %d", g);
            expect_grad(what, hb + g * PS, g0b + g * PS, fb, C);
            be->free(ux), be->free(uw), be->free(ub), be->free(uy), be->free(um), be->free(ur);
            free(ref), free(hy), free(hm), free(hr), free(fx), free(fw), free(fb), free(c.x),
                free(c.w), free(c.b), free(c.dout);
        }

        /* dinp NULL: the same parameter gradients; dweight = dbias = NULL: the same dinp */
        float *gwd2 = dev_f(be, g0w, np), *gbd2 = dev_f(be, g0b, np), *gxd2 = dev_f(be, g0x, nx);
        be->layernorm_grouped_backward(NULL, gwd2, gbd2, PS, dd, dx, dw, dmean, drstd, SS, G, N,
                                       C);
        be->layernorm_grouped_backward(gxd2, NULL, NULL, PS, dd, dx, dw, dmean, drstd, SS, G, N,
                                       C);
        float *hx2 = malloc(4 * nx), *hw2 = malloc(4 * np), *hb2 = malloc(4 * np);
        back_f(be, hx2, gxd2, nx), back_f(be, hw2, gwd2, np), back_f(be, hb2, gbd2, np);
        expect_same("layernorm_grouped_backward dweight with dinp NULL", hw2, hw, np);
        expect_same("layernorm_grouped_backward dbias with dinp NULL", hb2, hb, np);
        expect_same("layernorm_grouped_backward dinp with dweight, dbias NULL", hx2, hx, nx);

        be->free(dx), be->free(dw), be->free(db), be->free(dy), be->free(dmean),
            be->free(drstd), be->free(dy2), be->free(gxd), be->free(gwd), be->free(gbd),
            be->free(dd), be->free(gwd2), be->free(gbd2), be->free(gxd2);
        free(x), free(w), free(b), free(dout), free(m0), free(r0), free(y), free(mean),
            free(rstd), free(y2), free(g0x), free(g0w), free(g0b), free(hx), free(hw), free(hb),
            free(hx2), free(hw2), free(hb2);
    }
}

/* ---------------------------------------------------------------------------------------
 * GELU */

typedef struct {
    size_t n;
    double *x, *dout;
} ew_ctx;
static double ref_gelu1(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double gelu_loss(void *p)
{
    ew_ctx *c = p;
    double l = 0;
    for (size_t i = 0; i < c->n; i++)
        l += ref_gelu1(c->x[i]) * c->dout[i];
    return l;
}

Test(kernels, gelu_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 101;
        float *x = randv(n, 6), *dout = randv(n, 1);
        x[0] = 0.0f, x[1] = -12.0f, x[2] = 12.0f;
        ew_ctx c = {n, to_d(x, n), to_d(dout, n)};
        double *ref = malloc(8 * n);
        for (size_t i = 0; i < n; i++)
            ref[i] = ref_gelu1(c.x[i]);
        float *dx = dev_f(be, x, n), *dy = be->alloc(4 * n);
        be->gelu_forward(dy, dx, n);
        float *y = malloc(4 * n);
        back_f(be, y, dy, n);
        expect_close("gelu_forward", y, ref, n, 1e-6, 1e-6);
        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n);
        be->gelu_backward(g, dx, dd, n);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        double *fd = malloc(8 * n);
        fd_grad(fd, c.x, n, gelu_loss, &c);
        expect_grad("gelu_backward", h, g0, fd, n);
        be->free(dx), be->free(dy), be->free(g), be->free(dd);
        free(x), free(dout), free(ref), free(y), free(g0), free(h), free(fd), free(c.x),
            free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * the fused half tails: the unfused ops' bits, and the math against double */

static void half_to_host(const sherl_backend *be, uint16_t *h, const uint16_t *d, size_t n)
{
    be->synchronize();
    be->copy_to_host(h, d, n * sizeof(uint16_t));
}

static float widen_half(uint16_t h, int type)
{
    return type == SHERL_HALF_F16 ? sherl_f16_to_f32(h) : sherl_bf16_to_f32(h);
}

static void expect_same_u16(const char *what, const uint16_t *got, const uint16_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            cr_expect(0, "%s: element %zu is 0x%04x, want exactly 0x%04x", what, i, got[i],
                      want[i]);
            return;
        }
}

/* two half buffers on the backend, bit for bit */
static void expect_same_dev_u16(const sherl_backend *be, const char *what, const uint16_t *got,
                                const uint16_t *want, size_t n)
{
    uint16_t *g = malloc(2 * n), *w = malloc(2 * n);
    half_to_host(be, g, got, n), half_to_host(be, w, want, n);
    expect_same_u16(what, g, w, n);
    free(g), free(w);
}

/* (N, C): rows shorter than the CPU's spans, and rows that cross them (4096 elements) */
static const int fused_shapes[][2] = {{64, 96}, {3, 4099}};

Test(kernels, bias_gelu_half_forward_is_the_unfused_ops)
{
    FOR_EACH_BACKEND(be)
    for (int type = SHERL_HALF_BF16; type <= SHERL_HALF_F16; type++)
        for (int si = 0; si < 2; si++)
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                int N = fused_shapes[si][0], C = fused_shapes[si][1];
                size_t n = (size_t)N * C;
                float *x = randv(n, 5), *b = randv((size_t)C, 1);
                x[0] = 0.0f, x[1] = -12.0f, x[2] = 9.0f;
                float *db = with_bias ? dev_f(be, b, C) : NULL;
                /* unfused: bias_add, gelu, round */
                float *x1 = dev_f(be, x, n), *g = be->alloc(4 * n);
                uint16_t *h1 = be->alloc(2 * n), *h2 = be->alloc(2 * n);
                if (db)
                    be->bias_add_forward(x1, db, N, C);
                be->gelu_forward(g, x1, n);
                if (type == SHERL_HALF_F16)
                    be->f32_to_f16(h1, g, n);
                else
                    be->f32_to_bf16(h1, g, n);
                /* fused */
                float *x2 = dev_f(be, x, n);
                be->bias_gelu_half_forward(h2, x2, db, N, C, type);
                float *a1 = malloc(4 * n), *a2 = malloc(4 * n);
                uint16_t *o1 = malloc(2 * n), *o2 = malloc(2 * n);
                back_f(be, a1, x1, n), back_f(be, a2, x2, n);
                half_to_host(be, o1, h1, n), half_to_host(be, o2, h2, n);
                expect_same("bias_gelu_half_forward: x unchanged", a2, x, n);
                expect_same_u16("bias_gelu_half_forward: half(gelu)", o2, o1, n);
                /* against double: within the half type's rounding (2^-9 bf16, 2^-12 fp16
                 * relative) plus fp32's */
                double *want = malloc(8 * n);
                float *got = malloc(4 * n);
                for (size_t i = 0; i < n; i++) {
                    double v = (double)x[i] + (with_bias ? b[i % C] : 0.0);
                    want[i] = 0.5 * v * erfc(-v / sqrt(2.0));
                    got[i] = widen_half(o2[i], type);
                }
                double rt = type == SHERL_HALF_F16 ? 0x1p-11 : 0x1p-8;
                expect_close("bias_gelu_half_forward vs double", got, want, n,
                             type == SHERL_HALF_F16 ? 0x1p-24 : 1e-30, rt);
                be->free(db), be->free(x1), be->free(g), be->free(h1), be->free(h2),
                    be->free(x2);
                free(x), free(b), free(a1), free(a2), free(o1), free(o2), free(want), free(got);
            }
}

Test(kernels, residual_layernorm_forward_is_the_unfused_ops)
{
    FOR_EACH_BACKEND(be)
    for (int type = SHERL_HALF_BF16; type <= SHERL_HALF_F16; type++)
        for (int variant = 0; variant < 4; variant++) {
            /* lin_bias + out16; neither; res aliased over x; no res (x left as it was) */
            int N = 37, C = 771;
            size_t n = (size_t)N * C;
            float *x = randv(n, 2), *r = randv(n, 1), *lb = randv(C, 1), *w = randv(C, 1),
                  *b = randv(C, 1);
            float *dx1 = dev_f(be, x, n), *dx2 = dev_f(be, x, n), *dr = dev_f(be, r, n);
            float *dw = dev_f(be, w, C), *db = dev_f(be, b, C);
            float *dlb = variant != 1 ? dev_f(be, lb, C) : NULL;
            float *res2 = variant == 2 ? dx2 : variant == 3 ? NULL : be->alloc(4 * n);
            float *o1 = be->alloc(4 * n), *o2 = be->alloc(4 * n);
            float *st1 = be->alloc(8 * N), *st2 = be->alloc(8 * N);
            uint16_t *h1 = be->alloc(2 * n), *h2 = variant != 1 ? be->alloc(2 * n) : NULL;
            /* unfused: bias, residual, LayerNorm, round */
            if (dlb)
                be->bias_add_forward(dx1, dlb, N, C);
            be->residual_forward(dx1, dx1, dr, n);
            be->layernorm_forward(o1, st1, st1 + N, dx1, dw, db, N, C, 1e-12f);
            if (type == SHERL_HALF_F16)
                be->f32_to_f16(h1, o1, n);
            else
                be->f32_to_bf16(h1, o1, n);
            be->residual_layernorm_forward(o2, h2, res2, st2, st2 + N, dx2, dlb, dr, dw, db, N,
                                           C, 1e-12f, type);
            float *a1 = malloc(4 * n), *a2 = malloc(4 * n), *s1 = malloc(8 * N),
                  *s2 = malloc(8 * N), *e1 = malloc(4 * n), *e2 = malloc(4 * n);
            back_f(be, a1, dx1, n), back_f(be, a2, res2 ? res2 : dx2, n);
            back_f(be, e1, o1, n), back_f(be, e2, o2, n);
            back_f(be, s1, st1, 2 * N), back_f(be, s2, st2, 2 * N);
            if (res2)
                expect_same("residual_layernorm_forward: res", a2, a1, n);
            else
                expect_same("residual_layernorm_forward without res: x", a2, x, n);
            expect_same("residual_layernorm_forward: out", e2, e1, n);
            expect_same("residual_layernorm_forward: mean, rstd", s2, s1, 2 * (size_t)N);
            if (h2)
                expect_same_dev_u16(be, "residual_layernorm_forward: out16", h2, h1, n);
            /* against double: LayerNorm of x + lin_bias + resid */
            double *want = malloc(8 * n);
            for (int i = 0; i < N; i++) {
                double m = 0, v = 0, *row = want + (size_t)i * C;
                for (int c = 0; c < C; c++) {
                    size_t k = (size_t)i * C + c;
                    row[c] = (double)x[k] + (variant != 1 ? lb[c] : 0.0) + r[k];
                    m += row[c];
                }
                m /= C;
                for (int c = 0; c < C; c++)
                    v += (row[c] - m) * (row[c] - m);
                v /= C;
                for (int c = 0; c < C; c++)
                    row[c] = (row[c] - m) / sqrt(v + 1e-12) * w[c] + b[c];
            }
            expect_close("residual_layernorm_forward vs double", e2, want, n, 1e-5, 1e-5);
            be->free(dx1), be->free(dr), be->free(dw), be->free(db), be->free(dlb);
            if (res2 && res2 != dx2)
                be->free(res2);
            be->free(dx2), be->free(o1), be->free(o2), be->free(st1), be->free(st2);
            be->free(h1), be->free(h2);
            free(x), free(r), free(lb), free(w), free(b), free(a1), free(a2), free(s1), free(s2);
            free(e1), free(e2), free(want);
        }
}

Test(kernels, bias_half_round_forward_is_the_unfused_ops)
{
    FOR_EACH_BACKEND(be)
    for (int type = SHERL_HALF_BF16; type <= SHERL_HALF_F16; type++)
        for (int si = 0; si < 2; si++)
            for (int variant = 0; variant < 3; variant++) { /* bias and x16; no bias; no x16 */
                int N = fused_shapes[si][0], C = fused_shapes[si][1];
                size_t n = (size_t)N * C;
                float *x = randv(n, 3), *b = randv((size_t)C, 1);
                float *db = variant != 1 ? dev_f(be, b, C) : NULL;
                float *x1 = dev_f(be, x, n), *x2 = dev_f(be, x, n);
                uint16_t *h1 = be->alloc(2 * n), *h2 = variant != 2 ? be->alloc(2 * n) : NULL;
                if (db)
                    be->bias_add_forward(x1, db, N, C);
                if (type == SHERL_HALF_F16) {
                    be->f32_to_f16(h1, x1, n);
                    be->f16_to_f32(x1, h1, n);
                } else {
                    be->f32_to_bf16(h1, x1, n);
                    be->bf16_to_f32(x1, h1, n);
                }
                be->bias_half_round_forward(x2, h2, db, N, C, type);
                float *a1 = malloc(4 * n), *a2 = malloc(4 * n);
                back_f(be, a1, x1, n), back_f(be, a2, x2, n);
                expect_same("bias_half_round_forward: x", a2, a1, n);
                if (h2)
                    expect_same_dev_u16(be, "bias_half_round_forward: x16", h2, h1, n);
                /* against double: x + bias to the nearest half */
                double *want = malloc(8 * n);
                for (size_t i = 0; i < n; i++)
                    want[i] = (double)x[i] + (variant != 1 ? b[i % C] : 0.0);
                /* fp16's subnormals (below 2^-14) are 2^-24 apart */
                expect_close("bias_half_round_forward vs double", a2, want, n,
                             type == SHERL_HALF_F16 ? 0x1p-25 : 1e-30,
                             type == SHERL_HALF_F16 ? 0x1p-11 : 0x1p-8);
                be->free(db), be->free(x1), be->free(x2), be->free(h1), be->free(h2);
                free(x), free(b), free(a1), free(a2), free(want);
            }
}

/* ---------------------------------------------------------------------------------------
 * softmax */

typedef struct {
    int B, H, Tq, Tk;
    double scale;
    double *x, *mask, *dout;
} sm_ctx;
static void ref_softmax(double *out, const sm_ctx *c)
{
    for (int r = 0; r < c->B * c->H * c->Tq; r++) {
        int b = r / (c->H * c->Tq);
        double mx = -INFINITY, s = 0;
        for (int k = 0; k < c->Tk; k++) {
            double v = c->scale * c->x[r * c->Tk + k] + (c->mask ? c->mask[b * c->Tk + k] : 0);
            out[r * c->Tk + k] = v;
            mx = fmax(mx, v);
        }
        for (int k = 0; k < c->Tk; k++)
            s += (out[r * c->Tk + k] = exp(out[r * c->Tk + k] - mx));
        for (int k = 0; k < c->Tk; k++)
            out[r * c->Tk + k] /= s;
    }
}
static double sm_loss(void *p)
{
    sm_ctx *c = p;
    size_t n = (size_t)c->B * c->H * c->Tq * c->Tk;
    double *out = malloc(8 * n);
    ref_softmax(out, c);
    double l = dot_d(out, c->dout, n);
    free(out);
    return l;
}

Test(kernels, softmax_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 2, H = 3, Tq = 4, Tk = 5;
        size_t n = (size_t)B * H * Tq * Tk;
        float *x = randv(n, 3), *dout = randv(n, 1);
        float mask[10] = {0, 0, 0, 0, 0, 0, 0, 0, -FLT_MAX, -FLT_MAX}; /* batch 1: 2 keys padded */
        sm_ctx c = {B, H, Tq, Tk, 0.5, to_d(x, n), to_d(mask, 10), to_d(dout, n)};
        double *ref = malloc(8 * n);
        ref_softmax(ref, &c);
        float *dx = dev_f(be, x, n), *dm = dev_f(be, mask, 10), *dy = be->alloc(4 * n);
        be->softmax_forward(dy, dx, dm, 0.5f, B, H, Tq, Tk);
        float *y = malloc(4 * n);
        back_f(be, y, dy, n);
        expect_close("softmax_forward", y, ref, n, 1e-6, 1e-5);
        /* in place */
        float *dx2 = dev_f(be, x, n);
        be->softmax_forward(dx2, dx2, dm, 0.5f, B, H, Tq, Tk);
        back_f(be, y, dx2, n);
        expect_close("softmax_forward in place", y, ref, n, 1e-6, 1e-5);

        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n);
        be->softmax_backward(g, dd, dy, 0.5f, B, H, Tq, Tk);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        double *fd = malloc(8 * n);
        fd_grad(fd, c.x, n, sm_loss, &c);
        expect_grad("softmax_backward", h, g0, fd, n);
        be->free(dx), be->free(dm), be->free(dy), be->free(dx2), be->free(g), be->free(dd);
        free(x), free(dout), free(ref), free(y), free(g0), free(h), free(fd), free(c.x),
            free(c.mask), free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * attention */

typedef struct {
    int B, T, NH, HS;
    double *qkv, *mask, *dout;
} at_ctx;
static void ref_attention(double *out, const at_ctx *c)
{
    int C = c->NH * c->HS, C3 = 3 * C, T = c->T;
    double *p = malloc(8 * T);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int i = 0; i < T; i++) {
                const double *q = c->qkv + (b * T + i) * C3 + h * c->HS;
                double mx = -INFINITY, s = 0;
                for (int j = 0; j < T; j++) {
                    const double *k = c->qkv + (b * T + j) * C3 + C + h * c->HS;
                    double d = 0;
                    for (int e = 0; e < c->HS; e++)
                        d += q[e] * k[e];
                    p[j] = d / sqrt((double)c->HS) + (c->mask ? c->mask[b * T + j] : 0);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++)
                    s += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < c->HS; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += p[j] / s * c->qkv[(b * T + j) * C3 + 2 * C + h * c->HS + e];
                    out[(b * T + i) * C + h * c->HS + e] = o;
                }
            }
    free(p);
}
static double at_loss(void *p)
{
    at_ctx *c = p;
    size_t n = (size_t)c->B * c->T * c->NH * c->HS;
    double *out = malloc(8 * n);
    ref_attention(out, c);
    double l = dot_d(out, c->dout, n);
    free(out);
    return l;
}

Test(kernels, attention_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 2, T = 5, NH = 2, HS = 3, C = NH * HS;
        size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
        float *qkv = randv(nqkv, 1.5), *dout = randv(nout, 1);
        float mask[10] = {0, 0, 0, 0, 0, 0, 0, 0, -FLT_MAX, -FLT_MAX};
        at_ctx c = {B, T, NH, HS, to_d(qkv, nqkv), to_d(mask, 10), to_d(dout, nout)};
        double *ref = malloc(8 * nout);
        ref_attention(ref, &c);
        float *dq = dev_f(be, qkv, nqkv), *dm = dev_f(be, mask, 10), *dy = be->alloc(4 * nout);
        float *probs = be->alloc(4 * (size_t)B * NH * T * T);
        be->attention_forward(dy, probs, dq, dm, B, T, NH, HS);
        float *y = malloc(4 * nout);
        back_f(be, y, dy, nout);
        expect_close("attention_forward", y, ref, nout, 1e-5, 1e-5);

        float *g0 = randv(nqkv, 1), *g = dev_f(be, g0, nqkv), *dd = dev_f(be, dout, nout);
        be->attention_backward(g, dd, dq, probs, B, T, NH, HS);
        float *h = malloc(4 * nqkv);
        back_f(be, h, g, nqkv);
        double *fd = malloc(8 * nqkv);
        fd_grad(fd, c.qkv, nqkv, at_loss, &c);
        expect_grad("attention_backward", h, g0, fd, nqkv);
        be->free(dq), be->free(dm), be->free(dy), be->free(probs), be->free(g), be->free(dd);
        free(qkv), free(dout), free(ref), free(y), free(g0), free(h), free(fd), free(c.qkv),
            free(c.mask), free(c.dout);
    }
}

/* attention_half_forward on half-valued Q|K|V, both half types, with a padding mask: the
 * probabilities it keeps are half values within half an ulp (plus fp32's error) of the
 * softmax in double, and out is exactly those probabilities times V (in double, 1e-5), which a
 * product over the unrounded probabilities would miss by up to half an ulp of each. */
Test(kernels, attention_half_forward)
{
    FOR_EACH_BACKEND(be)
    {
        for (int type = SHERL_HALF_BF16; type <= SHERL_HALF_F16; type++) {
            int B = 2, T = 37, NH = 3, HS = 8, C = NH * HS, C3 = 3 * C;
            size_t nqkv = (size_t)B * T * C3, nout = (size_t)B * T * C,
                   np = (size_t)B * NH * T * T;
            float *qkv = randv(nqkv, 2.0), *mask = calloc((size_t)B * T, sizeof(float));
            for (size_t i = 0; i < nqkv; i++)
                qkv[i] = sherl_half_round_f32(qkv[i], type);
            for (int j = T - 5; j < T; j++)
                mask[T + j] = -FLT_MAX; /* the second sequence's last 5 tokens are padding */
            float *dq = dev_f(be, qkv, nqkv), *dm = dev_f(be, mask, (size_t)B * T);
            float *dy = be->alloc(4 * nout), *dp = be->alloc(4 * np);
            be->attention_half_forward(dy, dp, dq, dm, B, T, NH, HS, type);
            float *y = malloc(4 * nout), *p = malloc(4 * np);
            back_f(be, y, dy, nout);
            back_f(be, p, dp, np);
            double ulp = type == SHERL_HALF_F16 ? 0x1p-10 : 0x1p-7, worst_p = 0.0, worst_o = 0.0;
            size_t not_half = 0;
            double *ref = malloc(8 * (size_t)T);
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++)
                    for (int i = 0; i < T; i++) {
                        const float *q = qkv + ((size_t)b * T + i) * C3 + h * HS;
                        const float *pr = p + (((size_t)b * NH + h) * T + i) * T;
                        double mx = -INFINITY, sum = 0.0;
                        for (int j = 0; j < T; j++) {
                            const float *k = qkv + ((size_t)b * T + j) * C3 + C + h * HS;
                            double d = 0.0;
                            for (int e = 0; e < HS; e++)
                                d += (double)q[e] * k[e];
                            ref[j] = d / sqrt((double)HS) + mask[b * T + j];
                            mx = fmax(mx, ref[j]);
                        }
                        for (int j = 0; j < T; j++)
                            sum += (ref[j] = exp(ref[j] - mx));
                        for (int j = 0; j < T; j++) {
                            ref[j] /= sum;
                            not_half += sherl_half_round_f32(pr[j], type) != pr[j];
                            /* half an ulp of rounding (f16's subnormals: half their step,
                             * 2^-25), and fp32's softmax before it (2e-6 relative: the fp32
                             * dot products move exp's argument by up to ~1e-6) */
                            double bound = (0.5 * ulp + 2e-6) * ref[j] +
                                           (type == SHERL_HALF_F16 ? 0x1p-25 : 0.0);
                            worst_p = fmax(worst_p, fabs(pr[j] - ref[j]) / bound);
                        }
                        for (int e = 0; e < HS; e++) {
                            double o = 0.0, mag = 0.0;
                            for (int j = 0; j < T; j++) {
                                double v = qkv[((size_t)b * T + j) * C3 + 2 * C + h * HS + e];
                                o += (double)pr[j] * v;
                                mag += fabs(pr[j] * v);
                            }
                            double got = y[((size_t)b * T + i) * C + h * HS + e];
                            worst_o = fmax(worst_o, fabs(got - o) / (mag + 1e-30));
                        }
                    }
            cr_expect_eq(not_half, 0, "%s %s: %zu probabilities are not %s values", be->name,
                         type ? "f16" : "bf16", not_half, type ? "f16" : "bf16");
            cr_expect(worst_p <= 1.0, "%s %s: probabilities off the double softmax by %.3g of "
                      "their bound (expected <= 1)", be->name, type ? "f16" : "bf16", worst_p);
            cr_expect(worst_o <= 1e-5, "%s %s: out differs from probs . v by %.3g relative "
                      "(expected <= 1e-5)", be->name, type ? "f16" : "bf16", worst_o);
            be->free(dq), be->free(dm), be->free(dy), be->free(dp);
            free(qkv), free(mask), free(y), free(p), free(ref);
        }
    }
}

/* The analytic gradient of attention in double, for rows too long for finite differences:
 * the CPU backend cuts them into blocks of query rows, and T = 300 leaves a partial block. */
static void ref_attention_backward(double *dqkv, const at_ctx *c)
{
    int C = c->NH * c->HS, C3 = 3 * C, T = c->T, HS = c->HS;
    double *p = malloc(8 * (size_t)T), *dp = malloc(8 * (size_t)T);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int i = 0; i < T; i++) {
                const double *q = c->qkv + ((size_t)b * T + i) * C3 + h * HS;
                const double *dy = c->dout + ((size_t)b * T + i) * C + h * HS;
                double mx = -INFINITY, s = 0, dot = 0;
                for (int j = 0; j < T; j++) {
                    const double *k = c->qkv + ((size_t)b * T + j) * C3 + C + h * HS;
                    double d = 0;
                    for (int e = 0; e < HS; e++)
                        d += q[e] * k[e];
                    p[j] = d / sqrt((double)HS);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++)
                    s += (p[j] = exp(p[j] - mx));
                for (int j = 0; j < T; j++) {
                    p[j] /= s;
                    const double *v = c->qkv + ((size_t)b * T + j) * C3 + 2 * C + h * HS;
                    dp[j] = 0;
                    for (int e = 0; e < HS; e++) {
                        dp[j] += dy[e] * v[e];
                        dqkv[((size_t)b * T + j) * C3 + 2 * C + h * HS + e] += p[j] * dy[e];
                    }
                    dot += p[j] * dp[j];
                }
                for (int j = 0; j < T; j++) {
                    double ds = p[j] * (dp[j] - dot) / sqrt((double)HS);
                    const double *k = c->qkv + ((size_t)b * T + j) * C3 + C + h * HS;
                    for (int e = 0; e < HS; e++) {
                        dqkv[((size_t)b * T + i) * C3 + h * HS + e] += ds * k[e];
                        dqkv[((size_t)b * T + j) * C3 + C + h * HS + e] += ds * q[e];
                    }
                }
            }
    free(p), free(dp);
}

Test(kernels, attention_backward_long_rows)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 2, T = 300, NH = 2, HS = 4, C = NH * HS;
        size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
        float *qkv = randv(nqkv, 1.5), *dout = randv(nout, 1), *g0 = randv(nqkv, 1);
        at_ctx c = {B, T, NH, HS, to_d(qkv, nqkv), NULL, to_d(dout, nout)};
        double *ref = to_d(g0, nqkv);
        ref_attention_backward(ref, &c);
        float *dq = dev_f(be, qkv, nqkv), *dy = be->alloc(4 * nout), *dd = dev_f(be, dout, nout);
        float *probs = be->alloc(4 * (size_t)B * NH * T * T), *g = dev_f(be, g0, nqkv);
        be->attention_forward(dy, probs, dq, NULL, B, T, NH, HS);
        be->attention_backward(g, dd, dq, probs, B, T, NH, HS);
        float *h = malloc(4 * nqkv);
        back_f(be, h, g, nqkv);
        expect_close("attention_backward (long rows)", h, ref, nqkv, 1e-4, 1e-5);
        be->free(dq), be->free(dy), be->free(dd), be->free(probs), be->free(g);
        free(qkv), free(dout), free(g0), free(h), free(ref), free(c.qkv), free(c.dout);
    }
}

/* Softmax over padded keys gives them exactly zero weight: padding cannot leak. */
Test(kernels, attention_ignores_masked_keys)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 1, T = 4, NH = 1, HS = 2, C = 2;
        size_t nqkv = (size_t)T * 3 * C;
        float *qkv = randv(nqkv, 1);
        float mask[4] = {0, 0, -FLT_MAX, -FLT_MAX};
        float *dq = dev_f(be, qkv, nqkv), *dm = dev_f(be, mask, 4);
        float *y1 = be->alloc(4 * T * C), *p = be->alloc(4 * T * T);
        be->attention_forward(y1, p, dq, dm, B, T, NH, HS);
        float a[8];
        back_f(be, a, y1, 8);
        for (int t = 2; t < 4; t++) /* change padded keys' k and v wildly */
            for (int e = 0; e < 2 * C; e++)
                qkv[t * 3 * C + C + e] = 1000.0f;
        be->copy_to_device(dq, qkv, nqkv * 4);
        be->attention_forward(y1, p, dq, dm, B, T, NH, HS);
        float b[8];
        back_f(be, b, y1, 8);
        for (int i = 0; i < 8; i++)
            cr_expect(a[i] == b[i], "output %d changed: %g vs %g", i, a[i], b[i]);
        be->free(dq), be->free(dm), be->free(y1), be->free(p);
        free(qkv);
    }
}

/* ---------------------------------------------------------------------------------------
 * embedding */

typedef struct {
    int N, C;
    const int32_t *ids;
    double *table, *dout;
} emb_ctx;
static double emb_loss(void *p)
{
    emb_ctx *c = p;
    double l = 0;
    for (int n = 0; n < c->N; n++)
        for (int k = 0; k < c->C; k++)
            l += c->table[c->ids[n] * c->C + k] * c->dout[n * c->C + k];
    return l;
}

Test(kernels, embedding_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int V = 6, C = 4, N = 7;
        int32_t ids[7] = {3, 0, 5, 3, 3, 1, 5}; /* repeats: gradients must add */
        float *table = randv(V * C, 1), *dout = randv(N * C, 1);
        double *ref = malloc(8 * N * C);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < C; k++)
                ref[n * C + k] = table[ids[n] * C + k];
        float *dt = dev_f(be, table, V * C), *dy = be->alloc(4 * N * C);
        int32_t *di = dev_i(be, ids, N);
        be->embedding_forward(dy, di, dt, N, C);
        float *y = malloc(4 * N * C);
        back_f(be, y, dy, N * C);
        expect_close("embedding_forward", y, ref, N * C, 0, 0 + 1e-12);
        float *g0 = randv(V * C, 1), *g = dev_f(be, g0, V * C), *dd = dev_f(be, dout, N * C);
        be->embedding_backward(g, dd, di, N, C);
        float *h = malloc(4 * V * C);
        back_f(be, h, g, V * C);
        emb_ctx c = {N, C, ids, to_d(table, V * C), to_d(dout, N * C)};
        double *want = malloc(8 * V * C);
        fd_grad(want, c.table, V * C, emb_loss, &c);
        free(c.table), free(c.dout);
        expect_grad("embedding_backward", h, g0, want, V * C);
        be->free(dt), be->free(dy), be->free(di), be->free(g), be->free(dd);
        free(table), free(dout), free(ref), free(y), free(g0), free(h), free(want);
    }
}

/* ---------------------------------------------------------------------------------------
 * residual */

Test(kernels, residual_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 50000; /* above the parallel threshold */
        float *a = randv(n, 1), *b = randv(n, 1), *dout = randv(n, 1);
        double *ref = malloc(8 * n);
        for (size_t i = 0; i < n; i++)
            ref[i] = (double)a[i] + b[i];
        float *da = dev_f(be, a, n), *db = dev_f(be, b, n), *dy = be->alloc(4 * n);
        be->residual_forward(dy, da, db, n);
        float *y = malloc(4 * n);
        back_f(be, y, dy, n);
        expect_close("residual_forward", y, ref, n, 1e-7, 1e-7);
        float *ga0 = randv(n, 1), *gb0 = randv(n, 1);
        float *ga = dev_f(be, ga0, n), *gb = dev_f(be, gb0, n), *dd = dev_f(be, dout, n);
        be->residual_backward(ga, gb, dd, n);
        float *ha = malloc(4 * n), *hb = malloc(4 * n);
        back_f(be, ha, ga, n), back_f(be, hb, gb, n);
        double *want = to_d(dout, n);
        expect_grad("residual da", ha, ga0, want, n);
        expect_grad("residual db", hb, gb0, want, n);
        be->free(da), be->free(db), be->free(dy), be->free(ga), be->free(gb), be->free(dd);
        free(a), free(b), free(dout), free(ref), free(y), free(ga0), free(gb0), free(ha),
            free(hb), free(want);
    }
}

typedef struct {
    size_t n;
    double *a, *b, *dout;
} res_ctx;
static double res_loss(void *p)
{
    res_ctx *c = p;
    double l = 0;
    for (size_t i = 0; i < c->n; i++)
        l += (c->a[i] + c->b[i]) * c->dout[i];
    return l;
}

/* The same gradients by finite differences, on a size small enough to perturb every input. */
Test(kernels, residual_backward_finite_differences)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 37;
        float *a = randv(n, 1), *b = randv(n, 1), *dout = randv(n, 1);
        res_ctx c = {n, to_d(a, n), to_d(b, n), to_d(dout, n)};
        double *fa = malloc(8 * n), *fb = malloc(8 * n);
        fd_grad(fa, c.a, n, res_loss, &c);
        fd_grad(fb, c.b, n, res_loss, &c);
        float *ga0 = randv(n, 1), *gb0 = randv(n, 1);
        float *ga = dev_f(be, ga0, n), *gb = dev_f(be, gb0, n), *dd = dev_f(be, dout, n);
        be->residual_backward(ga, gb, dd, n);
        float *ha = malloc(4 * n), *hb = malloc(4 * n);
        back_f(be, ha, ga, n), back_f(be, hb, gb, n);
        expect_grad("residual da (fd)", ha, ga0, fa, n);
        expect_grad("residual db (fd)", hb, gb0, fb, n);
        be->free(ga), be->free(gb), be->free(dd);
        free(a), free(b), free(dout), free(fa), free(fb), free(ga0), free(gb0), free(ha), free(hb);
        free(c.a), free(c.b), free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * dropout */

typedef struct {
    size_t n;
    float p;
    uint64_t seed, offset;
    double *x, *dout;
} drop_ctx;
static double drop_loss(void *q)
{
    drop_ctx *c = q;
    double l = 0;
    for (size_t i = 0; i < c->n; i++)
        if (sherl_dropout_uniform(c->seed, c->offset + i) >= c->p)
            l += c->x[i] / (1.0 - c->p) * c->dout[i];
    return l;
}

Test(kernels, dropout_backward_finite_differences)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 200;
        float *x = randv(n, 1), *dout = randv(n, 1);
        drop_ctx c = {n, 0.3f, 99, 5, to_d(x, n), to_d(dout, n)};
        double *fd = malloc(8 * n);
        fd_grad(fd, c.x, n, drop_loss, &c);
        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n);
        be->dropout_backward(g, dd, n, c.p, c.seed, c.offset);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        expect_grad("dropout_backward (fd)", h, g0, fd, n);
        be->free(g), be->free(dd);
        free(x), free(dout), free(fd), free(g0), free(h), free(c.x), free(c.dout);
    }
}

Test(kernels, dropout_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 100000;
        float p = 0.3f;
        float *x = randv(n, 1), *dout = randv(n, 1);
        float *dx = dev_f(be, x, n), *dy = be->alloc(4 * n);
        be->dropout_forward(dy, dx, n, p, 1234, 77);
        float *y = malloc(4 * n);
        back_f(be, y, dy, n);
        size_t dropped = 0;
        double *ref = malloc(8 * n), *gref = malloc(8 * n);
        for (size_t i = 0; i < n; i++) {
            int keep = sherl_dropout_uniform(1234, 77 + i) >= p;
            dropped += !keep;
            ref[i] = keep ? x[i] / (1.0 - p) : 0.0;
            gref[i] = keep ? dout[i] / (1.0 - p) : 0.0;
        }
        expect_close("dropout_forward", y, ref, n, 1e-7, 1e-6);
        /* the RNG really drops about p of the elements (binomial sd ~ 145 here) */
        cr_expect(fabs((double)dropped - p * n) < 1500, "dropped %zu of %zu at p=%g", dropped, n,
                  (double)p);
        /* a different seed gives a different mask */
        float *y2 = malloc(4 * n);
        be->dropout_forward(dy, dx, n, p, 1235, 77);
        back_f(be, y2, dy, n);
        size_t differ = 0;
        for (size_t i = 0; i < n; i++)
            differ += (y[i] == 0.0f) != (y2[i] == 0.0f);
        cr_expect(differ > n / 10, "seed change altered only %zu mask entries", differ);

        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n);
        be->dropout_backward(g, dd, n, p, 1234, 77);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        expect_grad("dropout_backward", h, g0, gref, n);
        /* p = 0 is the identity */
        be->dropout_forward(dy, dx, n, 0.0f, 1, 0);
        back_f(be, y2, dy, n);
        cr_expect(memcmp(y2, x, 4 * n) == 0, "dropout p=0 is not the identity");
        be->free(dx), be->free(dy), be->free(g), be->free(dd);
        free(x), free(dout), free(y), free(y2), free(ref), free(gref), free(g0), free(h);
    }
}

/* ---------------------------------------------------------------------------------------
 * mean pooling */

typedef struct {
    int B, T, C;
    const int32_t *mask;
    double *x, *dout;
} mp_ctx;
static void ref_mean_pool(double *out, const mp_ctx *c)
{
    for (int b = 0; b < c->B; b++) {
        double cnt = 0;
        for (int t = 0; t < c->T; t++)
            cnt += c->mask[b * c->T + t];
        for (int k = 0; k < c->C; k++) {
            double s = 0;
            for (int t = 0; t < c->T; t++)
                s += c->mask[b * c->T + t] * c->x[(b * c->T + t) * c->C + k];
            out[b * c->C + k] = s / fmax(cnt, 1e-9);
        }
    }
}
static double mp_loss(void *p)
{
    mp_ctx *c = p;
    double *out = malloc(8 * c->B * c->C);
    ref_mean_pool(out, c);
    double l = dot_d(out, c->dout, (size_t)c->B * c->C);
    free(out);
    return l;
}

Test(kernels, mean_pool_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 3, T = 4, C = 5;
        int32_t mask[12] = {1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0}; /* last row: all padding */
        float *x = randv(B * T * C, 1), *dout = randv(B * C, 1);
        mp_ctx c = {B, T, C, mask, to_d(x, B * T * C), to_d(dout, B * C)};
        double *ref = malloc(8 * B * C);
        ref_mean_pool(ref, &c);
        float *dx = dev_f(be, x, B * T * C), *dy = be->alloc(4 * B * C);
        int32_t *dmask = dev_i(be, mask, 12);
        be->mean_pool_forward(dy, dx, dmask, B, T, C);
        float *y = malloc(4 * B * C);
        back_f(be, y, dy, B * C);
        expect_close("mean_pool_forward", y, ref, B * C, 1e-6, 1e-6);
        float *g0 = randv(B * T * C, 1), *g = dev_f(be, g0, B * T * C), *dd = dev_f(be, dout, B * C);
        be->mean_pool_backward(g, dd, dmask, B, T, C);
        float *h = malloc(4 * B * T * C);
        back_f(be, h, g, B * T * C);
        double *fd = malloc(8 * B * T * C);
        fd_grad(fd, c.x, B * T * C, mp_loss, &c);
        expect_grad("mean_pool_backward", h, g0, fd, B * T * C);
        be->free(dx), be->free(dy), be->free(dmask), be->free(g), be->free(dd);
        free(x), free(dout), free(ref), free(y), free(g0), free(h), free(fd), free(c.x),
            free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * L2 normalisation */

typedef struct {
    int N, C;
    double eps;
    double *x, *dout;
} l2_ctx;
static void ref_l2norm(double *out, const l2_ctx *c)
{
    for (int n = 0; n < c->N; n++) {
        double s = 0;
        for (int k = 0; k < c->C; k++)
            s += c->x[n * c->C + k] * c->x[n * c->C + k];
        double d = fmax(sqrt(s), c->eps);
        for (int k = 0; k < c->C; k++)
            out[n * c->C + k] = c->x[n * c->C + k] / d;
    }
}
static double l2_loss(void *p)
{
    l2_ctx *c = p;
    double *out = malloc(8 * c->N * c->C);
    ref_l2norm(out, c);
    double l = dot_d(out, c->dout, (size_t)c->N * c->C);
    free(out);
    return l;
}

Test(kernels, l2norm_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int N = 4, C = 6;
        float *x = randv(N * C, 1), *dout = randv(N * C, 1);
        l2_ctx c = {N, C, 1e-12, to_d(x, N * C), to_d(dout, N * C)};
        double *ref = malloc(8 * N * C);
        ref_l2norm(ref, &c);
        float *dx = dev_f(be, x, N * C), *dy = be->alloc(4 * N * C);
        be->l2norm_forward(dy, dx, N, C, 1e-12f);
        float *y = malloc(4 * N * C);
        back_f(be, y, dy, N * C);
        expect_close("l2norm_forward", y, ref, N * C, 1e-6, 1e-6);
        float *g0 = randv(N * C, 1), *g = dev_f(be, g0, N * C), *dd = dev_f(be, dout, N * C);
        be->l2norm_backward(g, dd, dx, N, C, 1e-12f);
        float *h = malloc(4 * N * C);
        back_f(be, h, g, N * C);
        double *fd = malloc(8 * N * C);
        fd_grad(fd, c.x, N * C, l2_loss, &c);
        expect_grad("l2norm_backward", h, g0, fd, N * C);
        be->free(dx), be->free(dy), be->free(g), be->free(dd);
        free(x), free(dout), free(ref), free(y), free(g0), free(h), free(fd), free(c.x),
            free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * ReLU */

Test(kernels, relu_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 50000; /* above the parallel threshold */
        float *x = randv(n, 1), *dout = randv(n, 1);
        x[0] = 0.0f, x[1] = -0.0f, x[2] = 1e-30f, x[3] = -1e-30f;
        double *ref = malloc(8 * n), *gref = malloc(8 * n);
        for (size_t i = 0; i < n; i++) {
            ref[i] = x[i] > 0 ? x[i] : 0.0;
            gref[i] = x[i] > 0 ? dout[i] : 0.0; /* relu'(0) = 0, as PyTorch */
        }
        float *dx = dev_f(be, x, n), *dy = be->alloc(4 * n);
        be->relu_forward(dy, dx, n);
        float *y = malloc(4 * n);
        back_f(be, y, dy, n);
        expect_close("relu_forward", y, ref, n, 1e-30, 1e-12);
        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n);
        be->relu_backward(g, dx, dd, n);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        expect_grad("relu_backward", h, g0, gref, n);
        cr_expect(h[0] == g0[0] && h[1] == g0[1] && h[3] == g0[3], "relu'(x <= 0) is not 0");
        be->free(dx), be->free(dy), be->free(g), be->free(dd);
        free(x), free(dout), free(ref), free(gref), free(y), free(g0), free(h);
    }
}

typedef struct {
    size_t n;
    double *x, *dout;
} relu_ctx;
static double relu_loss(void *p)
{
    relu_ctx *c = p;
    double l = 0;
    for (size_t i = 0; i < c->n; i++)
        l += (c->x[i] > 0 ? c->x[i] : 0.0) * c->dout[i];
    return l;
}

Test(kernels, relu_backward_finite_differences)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 41;
        float *x = randv(n, 1), *dout = randv(n, 1);
        for (size_t i = 0; i < n; i++) /* keep away from the kink */
            if (fabsf(x[i]) < 1e-3f)
                x[i] = 0.5f;
        relu_ctx c = {n, to_d(x, n), to_d(dout, n)};
        double *fd = malloc(8 * n);
        fd_grad(fd, c.x, n, relu_loss, &c);
        float *g0 = randv(n, 1), *g = dev_f(be, g0, n), *dd = dev_f(be, dout, n),
              *dx = dev_f(be, x, n);
        be->relu_backward(g, dx, dd, n);
        float *h = malloc(4 * n);
        back_f(be, h, g, n);
        expect_grad("relu_backward (fd)", h, g0, fd, n);
        be->free(g), be->free(dd), be->free(dx);
        free(x), free(dout), free(fd), free(g0), free(h), free(c.x), free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * SHERL guidance: the PyTorch formulation, literally, in double.
 *   xh = x / (||x|| + 1e-8); sim = xh_S xh_S^T; rho = relu(sim).sum(-1)
 *   s = w . (x_S * g) + c; a = relu(s) / rho; alpha = a / (sum |a| + 1e-8); z = g + sum alpha x */

typedef struct {
    int K, N, d;
    double *x, *w, *c, *dout;
} mtsa_ctx;

/* s, rho, alpha [N,S] and sim [N,S,S] may be NULL */
static void ref_mtsa(double *z, double *s, double *rho, double *alpha, double *sim,
                     const mtsa_ctx *c)
{
    int K = c->K, N = c->N, d = c->d, S = K - 1;
    double *xh = malloc(8 * (size_t)S * d), *sv = malloc(8 * S), *rv = malloc(8 * S),
           *av = malloc(8 * S);
    for (int n = 0; n < N; n++) {
        const double *g = c->x + ((size_t)S * N + n) * d;
        for (int j = 0; j < S; j++) {
            const double *xj = c->x + ((size_t)j * N + n) * d;
            double nn = 0;
            for (int e = 0; e < d; e++)
                nn += xj[e] * xj[e];
            for (int e = 0; e < d; e++)
                xh[j * d + e] = xj[e] / (sqrt(nn) + 1e-8);
        }
        double asum = 0;
        for (int j = 0; j < S; j++) {
            const double *xj = c->x + ((size_t)j * N + n) * d;
            rv[j] = 0;
            for (int m = 0; m < S; m++) {
                double cs = dot_d(xh + j * d, xh + m * d, d);
                if (sim)
                    sim[((size_t)n * S + j) * S + m] = cs;
                rv[j] += cs > 0 ? cs : 0;
            }
            sv[j] = c->c[0];
            for (int e = 0; e < d; e++)
                sv[j] += c->w[e] * xj[e] * g[e];
            av[j] = (sv[j] > 0 ? sv[j] : 0) / rv[j];
            asum += fabs(av[j]);
        }
        for (int e = 0; e < d; e++)
            z[(size_t)n * d + e] = g[e];
        for (int j = 0; j < S; j++) {
            const double *xj = c->x + ((size_t)j * N + n) * d;
            double al = av[j] / (asum + 1e-8);
            for (int e = 0; e < d; e++)
                z[(size_t)n * d + e] += al * xj[e];
            if (s)
                s[n * S + j] = sv[j];
            if (rho)
                rho[n * S + j] = rv[j];
            if (alpha)
                alpha[n * S + j] = al;
        }
    }
    free(xh), free(sv), free(rv), free(av);
}
static double mtsa_loss(void *p)
{
    mtsa_ctx *c = p;
    double *z = malloc(8 * (size_t)c->N * c->d);
    ref_mtsa(z, NULL, NULL, NULL, NULL, c);
    double l = dot_d(z, c->dout, (size_t)c->N * c->d);
    free(z);
    return l;
}

/* Forward against the reference, backward (dx of every tap, dw, dc) against finite
 * differences, accumulating into random gradients; NULL gradients are skipped. */
static void check_mtsa(const sherl_backend *be, float *x, float *w, float c0, int K, int N, int d)
{
    int S = K - 1;
    size_t nx = (size_t)K * N * d, nz = (size_t)N * d, ns = (size_t)N * S;
    float *dout = randv(nz, 1);
    mtsa_ctx c = {K, N, d, to_d(x, nx), to_d(w, d), malloc(8), to_d(dout, nz)};
    c.c[0] = c0;
    double *rz = malloc(8 * nz), *rs = malloc(8 * ns), *rr = malloc(8 * ns), *ra = malloc(8 * ns);
    ref_mtsa(rz, rs, rr, ra, NULL, &c);

    float *dx = dev_f(be, x, nx), *dw = dev_f(be, w, d), *dc = dev_f(be, &c0, 1);
    float *dz = be->alloc(4 * nz), *ds = be->alloc(4 * ns), *drho = be->alloc(4 * ns),
          *dalpha = be->alloc(4 * ns);
    be->mtsa_guide_forward(dz, ds, drho, dalpha, dx, dw, dc, K, N, d);
    float *hz = malloc(4 * nz), *hs = malloc(4 * ns), *hr = malloc(4 * ns), *ha = malloc(4 * ns);
    back_f(be, hz, dz, nz), back_f(be, hs, ds, ns), back_f(be, hr, drho, ns),
        back_f(be, ha, dalpha, ns);
    expect_close("mtsa_guide z", hz, rz, nz, 1e-5, 1e-5);
    expect_close("mtsa_guide s", hs, rs, ns, 1e-5, 1e-5);
    expect_close("mtsa_guide rho", hr, rr, ns, 1e-5, 1e-5);
    expect_close("mtsa_guide alpha", ha, ra, ns, 1e-5, 1e-5);

    float *g0x = randv(nx, 1), *g0w = randv(d, 1), *g0c = randv(1, 1);
    float *gx = dev_f(be, g0x, nx), *gw = dev_f(be, g0w, d), *gc = dev_f(be, g0c, 1);
    float *ddout = dev_f(be, dout, nz);
    be->mtsa_guide_backward(gx, gw, gc, ddout, dx, dw, ds, drho, dalpha, K, N, d);
    float *hx = malloc(4 * nx), *hw = malloc(4 * d), hc;
    back_f(be, hx, gx, nx), back_f(be, hw, gw, d), back_f(be, &hc, gc, 1);
    double *fx = malloc(8 * nx), *fw = malloc(8 * d), fc;
    fd_grad(fx, c.x, nx, mtsa_loss, &c);
    fd_grad(fw, c.w, d, mtsa_loss, &c);
    fd_grad(&fc, c.c, 1, mtsa_loss, &c);
    char what[64];
    for (int k = 0; k < K; k++) {
        snprintf(what, sizeof what, "mtsa_guide dx tap %d of %d", k, K);
        expect_grad(what, hx + (size_t)k * N * d, g0x + (size_t)k * N * d, fx + (size_t)k * N * d,
                    (size_t)N * d);
    }
    expect_grad("mtsa_guide dw", hw, g0w, fw, d);
    expect_grad("mtsa_guide dc", &hc, g0c, &fc, 1);

    /* NULL gradients are skipped; the others still accumulate the same amounts */
    be->copy_to_device(gx, g0x, 4 * nx);
    be->mtsa_guide_backward(gx, NULL, NULL, ddout, dx, dw, ds, drho, dalpha, K, N, d);
    back_f(be, hx, gx, nx);
    expect_grad("mtsa_guide dx (dw, dc NULL)", hx, g0x, fx, nx);
    be->copy_to_device(gw, g0w, 4 * d);
    be->copy_to_device(gc, g0c, 4);
    be->mtsa_guide_backward(NULL, gw, gc, ddout, dx, dw, ds, drho, dalpha, K, N, d);
    back_f(be, hw, gw, d), back_f(be, &hc, gc, 1);
    expect_grad("mtsa_guide dw (dx NULL)", hw, g0w, fw, d);
    expect_grad("mtsa_guide dc (dx NULL)", &hc, g0c, &fc, 1);

    be->free(dx), be->free(dw), be->free(dc), be->free(dz), be->free(ds), be->free(drho),
        be->free(dalpha), be->free(gx), be->free(gw), be->free(gc), be->free(ddout);
    free(dout), free(rz), free(rs), free(rr), free(ra), free(hz), free(hs), free(hr), free(ha),
        free(g0x), free(g0w), free(g0c), free(hx), free(hw), free(fx), free(fw);
    free(c.x), free(c.w), free(c.c), free(c.dout);
}

/* w . (x_j * g) for tap j of token n of a float x[K,N,d] */
static double mtsa_score(const float *x, const float *w, int K, int N, int d, int j, int n)
{
    double p = 0;
    for (int e = 0; e < d; e++)
        p += (double)w[e] * x[((size_t)j * N + n) * d + e] * x[((size_t)(K - 1) * N + n) * d + e];
    return p;
}

Test(kernels, mtsa_guide_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int K = 4, N = 3, d = 5, S = K - 1;
        float *x = randv((size_t)K * N * d, 1), *w = randv(d, 1), c0 = 0.05f;
        /* token 0: tap 0 scores well above the bias; tap 1 = -tap 0 + noise, nearly opposite
         * (cos ~ -1), so its score is negative and relu(s) = 0 */
        if (mtsa_score(x, w, K, N, d, 0, 0) < 0)
            for (int e = 0; e < d; e++)
                x[e] = -x[e];
        for (int e = 0; e < d; e++)
            x[((size_t)1 * N + 0) * d + e] = -x[e] + 0.05f * (float)(2 * urand() - 1);
        /* token 2: tap 2 scores negative, the others positive */
        for (int j = 0; j < S; j++) {
            double p = mtsa_score(x, w, K, N, d, j, 2);
            if ((j == 2) != (p < 0))
                for (int e = 0; e < d; e++)
                    x[((size_t)j * N + 2) * d + e] *= -1.0f;
        }
        /* the premises: s and cos of both signs, each well away from the relu kinks, and an
         * active tap (s > 0) with a positive cosine to another tap, so rho's off-diagonal
         * terms carry gradient */
        mtsa_ctx c = {K, N, d, to_d(x, (size_t)K * N * d), to_d(w, d), malloc(8), NULL};
        c.c[0] = c0;
        double *z = malloc(8 * N * d), *s = malloc(8 * N * S), *sim = malloc(8 * N * S * S);
        ref_mtsa(z, s, NULL, NULL, sim, &c);
        int s_neg = 0, s_pos = 0, cos_neg = 0, active_pos = 0;
        double s_min = INFINITY, cos_min = INFINITY, cos_low = 0;
        for (int n = 0; n < N; n++)
            for (int j = 0; j < S; j++) {
                double sj = s[n * S + j];
                s_neg += sj < 0, s_pos += sj > 0, s_min = fmin(s_min, fabs(sj));
                for (int m = 0; m < S; m++) {
                    double cs = sim[(n * S + j) * S + m];
                    cos_neg += cs < 0, cos_min = fmin(cos_min, fabs(cs));
                    cos_low = fmin(cos_low, cs);
                    active_pos += sj > 0 && m != j && cs > 0;
                }
            }
        cr_assert(s_neg >= 2 && s_pos >= 2 && s_min > 1e-3, "s: %d neg %d pos, min |s| %g", s_neg,
                  s_pos, s_min);
        cr_assert(cos_neg >= 2 && cos_low < -0.9 && cos_min > 1e-3 && active_pos >= 1,
                  "cos: %d neg, lowest %g, min |cos| %g, active pairs %d", cos_neg, cos_low,
                  cos_min, active_pos);
        free(c.x), free(c.w), free(c.c), free(z), free(s), free(sim);

        check_mtsa(be, x, w, c0, K, N, d);
        free(x), free(w);
    }
}

/* One shallow tap (K = 2): rho = cos(x, x) ~ 1 and alpha ~ 1 or 0. */
Test(kernels, mtsa_guide_single_shallow_tap)
{
    FOR_EACH_BACKEND(be)
    {
        int K = 2, N = 3, d = 5;
        float *x = randv((size_t)K * N * d, 1), *w = randv(d, 1), c0 = -0.02f;
        for (int n = 0; n < N; n++) { /* token 1 negative, the others positive */
            double p = mtsa_score(x, w, K, N, d, 0, n);
            if ((n == 1) != (p < 0))
                for (int e = 0; e < d; e++)
                    x[(size_t)n * d + e] *= -1.0f;
            p = fabs(mtsa_score(x, w, K, N, d, 0, n));
            cr_assert(p > 0.05, "token %d: |w . (x g)| = %g too close to the kink", n, p);
        }
        check_mtsa(be, x, w, c0, K, N, d);
        free(x), free(w);
    }
}

/* ---------------------------------------------------------------------------------------
 * tanh gate */

typedef struct {
    size_t n;
    double temp;
    double *y, *h, *lambda, *dout;
} gate_ctx;
static double gate_loss(void *p)
{
    gate_ctx *c = p;
    double t = tanh(c->lambda[0] / c->temp), l = 0;
    for (size_t i = 0; i < c->n; i++)
        l += (c->y[i] + t * c->h[i]) * c->dout[i];
    return l;
}

Test(kernels, gate_add_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        size_t n = 37;
        float temp = 0.1f, lam = 0.03f;
        float *y = randv(n, 1), *h = randv(n, 1), *dout = randv(n, 1);
        gate_ctx c = {n, temp, to_d(y, n), to_d(h, n), malloc(8), to_d(dout, n)};
        c.lambda[0] = lam;
        double *ref = malloc(8 * n);
        for (size_t i = 0; i < n; i++)
            ref[i] = c.y[i] + tanh(c.lambda[0] / c.temp) * c.h[i];
        float *dy = dev_f(be, y, n), *dh = dev_f(be, h, n), *dl = dev_f(be, &lam, 1);
        float *dout_d = be->alloc(4 * n);
        be->gate_add_forward(dout_d, dy, dh, dl, temp, n);
        float *o = malloc(4 * n);
        back_f(be, o, dout_d, n);
        expect_close("gate_add_forward", o, ref, n, 1e-6, 1e-6);

        float *g0y = randv(n, 1), *g0l = randv(1, 1);
        float *gy = dev_f(be, g0y, n), *gl = dev_f(be, g0l, 1), *dd = dev_f(be, dout, n);
        be->gate_add_backward(gy, gl, dd, dh, dl, temp, n);
        float *hy = malloc(4 * n), hl;
        back_f(be, hy, gy, n), back_f(be, &hl, gl, 1);
        double *fy = malloc(8 * n), fl;
        fd_grad(fy, c.y, n, gate_loss, &c);
        fd_grad(&fl, c.lambda, 1, gate_loss, &c);
        expect_grad("gate_add dy", hy, g0y, fy, n);
        expect_grad("gate_add dlambda", &hl, g0l, &fl, 1);
        /* NULL dy: dlambda alone; NULL dlambda: dy alone */
        be->copy_to_device(gl, g0l, 4);
        be->gate_add_backward(NULL, gl, dd, dh, dl, temp, n);
        back_f(be, &hl, gl, 1);
        expect_grad("gate_add dlambda (dy NULL)", &hl, g0l, &fl, 1);
        be->copy_to_device(gy, g0y, 4 * n);
        be->gate_add_backward(gy, NULL, dd, dh, dl, temp, n);
        back_f(be, hy, gy, n);
        expect_grad("gate_add dy (dlambda NULL)", hy, g0y, fy, n);
        be->free(dy), be->free(dh), be->free(dl), be->free(dout_d), be->free(gy), be->free(gl),
            be->free(dd);
        free(y), free(h), free(dout), free(ref), free(o), free(g0y), free(g0l), free(hy), free(fy);
        free(c.y), free(c.h), free(c.lambda), free(c.dout);
    }
}

/* ---------------------------------------------------------------------------------------
 * losses */

typedef struct {
    int B, C;
    const int32_t *labels;
    double *logits;
} ce_ctx;
/* per-row loss into losses (may be NULL) and probs (may be NULL); returns the mean */
static double ref_crossentropy(double *losses, double *probs, const ce_ctx *c)
{
    double mean = 0;
    for (int b = 0; b < c->B; b++) {
        const double *x = c->logits + (size_t)b * c->C;
        double mx = -INFINITY, s = 0;
        for (int k = 0; k < c->C; k++)
            mx = fmax(mx, x[k]);
        for (int k = 0; k < c->C; k++)
            s += exp(x[k] - mx);
        double l = log(s) + mx - x[c->labels[b]];
        if (losses)
            losses[b] = l;
        if (probs)
            for (int k = 0; k < c->C; k++)
                probs[(size_t)b * c->C + k] = exp(x[k] - mx) / s;
        mean += l / c->B;
    }
    return mean;
}
static double ce_loss(void *p) { return ref_crossentropy(NULL, NULL, p); }

Test(kernels, crossentropy_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 4, C = 5;
        int32_t labels[4] = {2, 0, 4, 4};
        float *logits = randv(B * C, 3);
        for (int k = 0; k < C; k++) /* row 1 far above float exp's range: must stay finite */
            logits[C + k] += 200.0f;
        logits[3 * C + 4] = 30.0f; /* row 3: a near-certain right answer, loss ~ 0 */
        ce_ctx c = {B, C, labels, to_d(logits, B * C)};
        double *rl = malloc(8 * B), *rp = malloc(8 * B * C);
        ref_crossentropy(rl, rp, &c);
        float *dlog = dev_f(be, logits, B * C), *dl = be->alloc(4 * B), *dp = be->alloc(4 * B * C);
        int32_t *dlab = dev_i(be, labels, B);
        be->crossentropy_forward(dl, dp, dlog, dlab, B, C);
        float *hl = malloc(4 * B), *hp = malloc(4 * B * C);
        back_f(be, hl, dl, B), back_f(be, hp, dp, B * C);
        expect_close("crossentropy losses", hl, rl, B, 1e-6, 1e-5);
        expect_close("crossentropy probs", hp, rp, B * C, 1e-7, 1e-5);

        float *g0 = randv(B * C, 1), *g = dev_f(be, g0, B * C);
        be->crossentropy_backward(g, dp, dlab, 1.0f / B, B, C);
        float *h = malloc(4 * B * C);
        back_f(be, h, g, B * C);
        double *fd = malloc(8 * B * C);
        fd_grad(fd, c.logits, B * C, ce_loss, &c);
        expect_grad("crossentropy dlogits (mean loss)", h, g0, fd, B * C);
        be->free(dlog), be->free(dl), be->free(dp), be->free(dlab), be->free(g);
        free(logits), free(rl), free(rp), free(hl), free(hp), free(g0), free(h), free(fd),
            free(c.logits);
    }
}

typedef struct {
    int B;
    double scale;
    double *pred, *target;
} mse_ctx;
static double mse_loss(void *p)
{
    mse_ctx *c = p;
    double l = 0;
    for (int b = 0; b < c->B; b++)
        l += c->scale * (c->pred[b] - c->target[b]) * (c->pred[b] - c->target[b]);
    return l;
}

Test(kernels, mse_forward_backward)
{
    FOR_EACH_BACKEND(be)
    {
        int B = 7;
        float *pred = randv(B, 2), *target = randv(B, 2);
        mse_ctx c = {B, 1.0 / B, to_d(pred, B), to_d(target, B)};
        double *ref = malloc(8 * B);
        for (int b = 0; b < B; b++)
            ref[b] = (c.pred[b] - c.target[b]) * (c.pred[b] - c.target[b]);
        float *dp = dev_f(be, pred, B), *dt = dev_f(be, target, B), *dl = be->alloc(4 * B);
        be->mse_forward(dl, dp, dt, B);
        float *hl = malloc(4 * B);
        back_f(be, hl, dl, B);
        expect_close("mse_forward", hl, ref, B, 1e-6, 1e-6);
        float *g0 = randv(B, 1), *g = dev_f(be, g0, B);
        be->mse_backward(g, dp, dt, 1.0f / B, B);
        float *h = malloc(4 * B);
        back_f(be, h, g, B);
        double *fd = malloc(8 * B);
        fd_grad(fd, c.pred, B, mse_loss, &c);
        expect_grad("mse dpred (mean loss)", h, g0, fd, B);
        be->free(dp), be->free(dt), be->free(dl), be->free(g);
        free(pred), free(target), free(ref), free(hl), free(g0), free(h), free(fd), free(c.pred),
            free(c.target);
    }
}

/* ---------------------------------------------------------------------------------------
 * optimizer */

/* torch.optim.AdamW's update in double, the hyper-parameters taken as the floats we pass. */
static void ref_adamw(double *p, const double *g, double *m, double *v, size_t n, double lr,
                      double b1, double b2, double eps, double wd, int t)
{
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
}

Test(kernels, adamw_update_three_steps)
{
    FOR_EACH_BACKEND(be)
    {
        const float wds[2] = {0.0f, 0.05f};
        for (int wi = 0; wi < 2; wi++) {
            size_t n = 9;
            float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = wds[wi];
            float *p = randv(n, 1), *zero = calloc(n, 4);
            double *rp = to_d(p, n), *rm = calloc(n, 8), *rv = calloc(n, 8);
            float *dp = dev_f(be, p, n), *dm = dev_f(be, zero, n), *dv = dev_f(be, zero, n);
            for (int t = 1; t <= 3; t++) {
                float *g = randv(n, 1);
                g[0] = t == 1 ? 0.0f : g[0]; /* m = v = 0 at step 1: only the decay moves it */
                g[1] = 1e-4f;                /* a small gradient: eps matters little */
                double *gd = to_d(g, n);
                ref_adamw(rp, gd, rm, rv, n, lr, b1, b2, eps, wd, t);
                float *dg = dev_f(be, g, n);
                be->adamw_update(dp, dg, dm, dv, n, lr, b1, b2, eps, wd, t);
                be->free(dg);
                free(g), free(gd);
            }
            float *hp = malloc(4 * n), *hm = malloc(4 * n), *hv = malloc(4 * n);
            back_f(be, hp, dp, n), back_f(be, hm, dm, n), back_f(be, hv, dv, n);
            char what[64];
            snprintf(what, sizeof what, "adamw param (wd %g)", (double)wd);
            expect_close(what, hp, rp, n, 1e-12, 1e-6);
            snprintf(what, sizeof what, "adamw m (wd %g)", (double)wd);
            expect_close(what, hm, rm, n, 1e-12, 1e-6);
            snprintf(what, sizeof what, "adamw v (wd %g)", (double)wd);
            expect_close(what, hv, rv, n, 1e-15, 1e-6);
            be->free(dp), be->free(dm), be->free(dv);
            free(p), free(zero), free(rp), free(rm), free(rv), free(hp), free(hm), free(hv);
        }
    }
}

Test(kernels, sumsq_and_scale)
{
    FOR_EACH_BACKEND(be)
    {
        size_t sizes[3] = {0, 37, 100003}; /* empty, small, above the parallel threshold */
        for (int si = 0; si < 3; si++) {
            size_t n = sizes[si];
            float *x = randv(n, 3);
            double want = 0;
            for (size_t i = 0; i < n; i++)
                want += (double)x[i] * x[i];
            float *dx = dev_f(be, x, n);
            double got = be->sumsq(dx, n);
            cr_expect(fabs(got - want) <= 1e-12 * want, "sumsq n=%zu: got %.17g want %.17g", n,
                      got, want);
            double *ref = malloc(8 * n + 8);
            for (size_t i = 0; i < n; i++)
                ref[i] = (float)((double)x[i] * -0.37f); /* float product, correctly rounded */
            be->scale(dx, n, -0.37f);
            back_f(be, x, dx, n);
            expect_close("scale", x, ref, n, 1e-30, 1e-12);
            be->free(dx);
            free(x), free(ref);
        }
    }
}

/* The new reductions into one shared value (sumsq, dw/dc of the guidance, dlambda of the gate)
 * do not depend on the thread count, to the bit. The float results are made sensitive to the
 * order of the double partial sums: their inputs come in mirrored pairs that cancel exactly,
 * so what is left is the rounding residue of the summation order alone. */
Test(kernels, training_reductions_threaded_equal_single_thread)
{
    const sherl_backend *be = sherl_backend_cpu();
    size_t nsq = ((size_t)1 << 20) + 3, n = 100003, half = n / 2;
    float *sx = malloc(4 * nsq);
    for (size_t i = 0; i < nsq; i++) /* magnitudes over 8 decades */
        sx[i] = (float)((2 * urand() - 1) * pow(10.0, 8 * urand() - 4));
    float *x = randv(n, 1), *h = randv(n, 1), lam = 0.02f;
    for (size_t i = 0; i < half; i++)
        x[half + i] = x[i], h[half + i] = -h[i];
    h[n - 1] = 0.0f;
    int K = 4, N = 1000, d = 24, S = K - 1; /* K N d = 96000, above PAR_MIN */
    size_t nx = (size_t)K * N * d, nz = (size_t)N * d, ns = (size_t)N * S, tok = (size_t)N / 2 * d;
    float *mx = randv(nx, 1), *w = randv(d, 1), c0 = 0.01f, *dz = randv(nz, 1);
    for (int k = 0; k < K; k++) /* token n + N/2 = token n, with dz negated */
        memcpy(mx + (size_t)k * N * d + tok, mx + (size_t)k * N * d, 4 * tok);
    for (size_t i = 0; i < tok; i++)
        dz[tok + i] = -dz[i];
    float *z = malloc(4 * nz), *s = malloc(4 * ns), *rho = malloc(4 * ns), *alpha = malloc(4 * ns);
    double sq[2];
    float dlam[2], dw[2][24], dc[2], *dx[2], *z2 = malloc(4 * nz);
    for (int r = 0; r < 2; r++) {
        be->set_threads(r + 1);
        sq[r] = be->sumsq(sx, nsq);
        dlam[r] = 0.0f;
        be->gate_add_backward(NULL, &dlam[r], x, h, &lam, 0.1f, n);
        be->mtsa_guide_forward(r ? z2 : z, s, rho, alpha, mx, w, &c0, K, N, d);
        dx[r] = calloc(nx, 4);
        memset(dw[r], 0, sizeof dw[r]);
        dc[r] = 0.0f;
        be->mtsa_guide_backward(dx[r], dw[r], &dc[r], dz, mx, w, s, rho, alpha, K, N, d);
    }
    cr_expect(be->get_threads() == 2, "set_threads(2) not taken: %d", be->get_threads());
    cr_expect(memcmp(&sq[0], &sq[1], sizeof sq[0]) == 0, "sumsq: %.17g vs %.17g", sq[0], sq[1]);
    cr_expect(memcmp(&dlam[0], &dlam[1], 4) == 0, "gate dlambda: %.9g vs %.9g", (double)dlam[0],
              (double)dlam[1]);
    cr_expect(memcmp(z, z2, 4 * nz) == 0, "mtsa_guide z differs between 1 and 2 threads");
    cr_expect(memcmp(dw[0], dw[1], sizeof dw[0]) == 0, "mtsa_guide dw differs: %.9g vs %.9g",
              (double)dw[0][0], (double)dw[1][0]);
    cr_expect(memcmp(&dc[0], &dc[1], 4) == 0, "mtsa_guide dc: %.9g vs %.9g", (double)dc[0],
              (double)dc[1]);
    cr_expect(memcmp(dx[0], dx[1], 4 * nx) == 0, "mtsa_guide dx differs");
    free(sx), free(x), free(h), free(mx), free(w), free(dz), free(z), free(z2), free(s), free(rho),
        free(alpha), free(dx[0]), free(dx[1]);
}

/* ---------------------------------------------------------------------------------------
 * Sizes above the parallel thresholds run the threaded paths; they must agree with the
 * same op run on one thread to the last bit (each output element has a single owner). */

Test(kernels, threaded_equals_single_thread)
{
    const sherl_backend *be = sherl_backend_cpu();
    int B = 4, T = 64, NH = 4, HS = 16, C = NH * HS;
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    float *qkv = randv(nqkv, 1), *w = randv(C, 1), *b = randv(C, 1);
    float *o1 = malloc(4 * nout), *o2 = malloc(4 * nout), *p = malloc(4 * (size_t)B * NH * T * T);
    float *l1 = malloc(4 * nout), *l2 = malloc(4 * nout);
    be->set_threads(1);
    be->attention_forward(o1, p, qkv, NULL, B, T, NH, HS);
    be->layernorm_forward(l1, NULL, NULL, o1, w, b, B * T, C, 1e-12f);
    be->set_threads(2);
    be->attention_forward(o2, p, qkv, NULL, B, T, NH, HS);
    be->layernorm_forward(l2, NULL, NULL, o2, w, b, B * T, C, 1e-12f);
    cr_expect(be->get_threads() == 2, "set_threads(2) not taken: %d", be->get_threads());
    cr_expect(memcmp(o1, o2, 4 * nout) == 0, "attention differs between 1 and 2 threads");
    cr_expect(memcmp(l1, l2, 4 * nout) == 0, "layernorm differs between 1 and 2 threads");
    free(qkv), free(w), free(b), free(o1), free(o2), free(p), free(l1), free(l2);
}

Test(kernels, backend_lookup)
{
    cr_expect(sherl_backend_by_name("cpu") == sherl_backend_cpu());
    cr_expect(sherl_backend_by_name("auto") != NULL);
    cr_expect(sherl_backend_by_name("tpu") == NULL);
    cr_expect(sherl_backend_by_name(NULL) == NULL);
    /* "cuda:N": digits only, one spelling per device, below SHERL_CUDA_MAX_DEVICES */
    static const struct {
        const char *name;
        int index;
    } names[] = {{"cuda:0", 0},   {"cuda:7", 7},    {"cuda:15", 15}, {"cuda:16", -1},
                 {"cuda:99", -1}, {"cuda:01", -1},  {"cuda:", -1},   {"cuda:-1", -1},
                 {"cuda:+1", -1}, {"cuda:1x", -1},  {"cuda: 1", -1}, {"cuda", -1},
                 {"cpu", -1},     {"CUDA:1", -1},   {"cuda:1 ", -1}, {NULL, -1}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        cr_expect(sherl_cuda_device_of_name(names[i].name) == names[i].index,
                  "'%s' gave device %d, expected %d", names[i].name ? names[i].name : "(null)",
                  sherl_cuda_device_of_name(names[i].name), names[i].index);
    /* a GPU this node lacks selects nothing, the same as a name that is not one */
    cr_expect(sherl_backend_by_name("cuda:15") == sherl_backend_cuda_device(15));
    cr_expect(sherl_backend_by_name("cuda:16") == NULL);
    cr_expect(sherl_backend_by_name("cuda") == sherl_backend_cuda());
    char label[64];
    sherl_backend_label(sherl_backend_cpu(), label, sizeof label);
    cr_expect_str_eq(label, "cpu");
}

/* Each GPU has its own table, every entry of which runs on that GPU: the same ops, wrapped per
 * device. Without a GPU, the tables still exist (for tests): each entry is a distinct function
 * per device, and a call through device d's table fails in d's own error record, naming d. */
Test(kernels, cuda_table_per_device)
{
    const sherl_backend *t0 = sherl_backend_cuda_table_for_tests(0);
    if (!t0) { /* a build without nvcc has no tables at all */
        char why[256];
        cr_assert(sherl_cuda_devices(NULL, 0, why, sizeof why) == 0);
        cr_expect(strstr(why, "no CUDA backend") != NULL, "%s", why);
        cr_expect(sherl_backend_cuda_device(0) == NULL);
        return;
    }
    cr_expect(sherl_backend_cuda_table_for_tests(-1) == NULL);
    cr_expect(sherl_backend_cuda_table_for_tests(SHERL_CUDA_MAX_DEVICES) == NULL);
    /* the struct as pointer-sized words, skipping the three fields that are not functions */
    size_t skip[][2] = {{offsetof(sherl_backend, name), sizeof(const char *)},
                        {offsetof(sherl_backend, host_memory), sizeof(int)},
                        {offsetof(sherl_backend, device), sizeof(int)}};
    size_t words = sizeof(sherl_backend) / sizeof(void *), ops = 0;
    for (int d = 0; d < SHERL_CUDA_MAX_DEVICES; d++) {
        const sherl_backend *t = sherl_backend_cuda_table_for_tests(d);
        cr_assert(t != NULL, "no table for device %d", d);
        cr_expect(t->device == d && !strcmp(t->name, "cuda") && !t->host_memory,
                  "table %d: device %d name %s host_memory %d", d, t->device, t->name,
                  t->host_memory);
        char label[64], want[64];
        sherl_backend_label(t, label, sizeof label);
        snprintf(want, sizeof want, "cuda:%d", d);
        cr_expect_str_eq(label, want);
        ops = 0;
        for (size_t w = 0; w < words; w++) {
            size_t off = w * sizeof(void *);
            int data = 0;
            for (size_t k = 0; k < 3; k++)
                data |= off < skip[k][0] + skip[k][1] && skip[k][0] < off + sizeof(void *);
            if (data)
                continue;
            void *mine, *first;
            memcpy(&mine, (const char *)t + off, sizeof mine);
            memcpy(&first, (const char *)t0 + off, sizeof first);
            cr_expect(mine != NULL, "device %d: the entry at byte %zu is NULL", d, off);
            if (d)
                cr_expect(mine != first, "device %d: the entry at byte %zu is device 0's (not "
                                         "wrapped for its device)",
                          d, off);
            ops++;
        }
    }
    cr_expect(ops >= 70, "only %zu entries found", ops);
    /* Devices 15 and 14 are absent on any machine this runs on (a node with 16 GPUs aside). */
    const sherl_backend *a = sherl_backend_cuda_table_for_tests(15),
                        *b = sherl_backend_cuda_table_for_tests(14);
    char msg[600];
    a->take_error(NULL, 0), b->take_error(NULL, 0);
    cr_expect(a->alloc(64) == NULL, "an allocation on an absent GPU succeeded");
    cr_expect(b->take_error(msg, sizeof msg) == 0, "device 14 got device 15's failure: %s", msg);
    cr_assert(a->take_error(msg, sizeof msg) == -1, "no failure recorded for device 15");
    cr_expect(strstr(msg, "cudaSetDevice(15)") && strstr(msg, "cuda:15"), "%s", msg);
    cr_expect(a->take_error(msg, sizeof msg) == 0, "the record was not cleared: %s", msg);
    b->zero(NULL, 0);
    cr_assert(b->take_error(msg, sizeof msg) == -1);
    cr_expect(strstr(msg, "cudaSetDevice(14)") != NULL, "%s", msg);
    size_t fr = 1, tot = 1;
    cr_expect(a->mem_info(&fr, &tot) == -1, "mem_info of an absent GPU succeeded");
    a->take_error(NULL, 0);
    /* with a GPU, device 0 is the first usable one and its table is the one "cuda" names */
    if (sherl_backend_cuda_device(0)) {
        cr_expect(sherl_backend_cuda() == t0 && sherl_backend_by_name("cuda:0") == t0);
        float *p = t0->alloc(64 * sizeof(float));
        float h[64];
        for (int i = 0; i < 64; i++)
            h[i] = (float)i;
        t0->copy_to_device(p, h, sizeof h);
        t0->scale(p, 64, 2.0f);
        t0->copy_to_host(h, p, sizeof h);
        t0->free(p);
        cr_expect(t0->take_error(msg, sizeof msg) == 0, "%s", msg);
        cr_expect(h[63] == 126.0f, "scale on cuda:0 gave %g", h[63]);
    }
}

/* Every backend fills the whole table: a missing op would only show up as a crash later. */
Test(kernels, every_backend_fills_every_op)
{
    FOR_EACH_BACKEND(be)
    {
#define HAS(f) cr_expect(be->f != NULL, "%s backend lacks %s", be->name, #f)
        HAS(name);
        HAS(alloc);
        HAS(free);
        HAS(copy_to_device);
        HAS(copy_to_host);
        HAS(zero);
        HAS(synchronize);
        HAS(set_threads);
        HAS(get_threads);
        HAS(describe);
        HAS(performance_advice);
        HAS(scratch_bytes);
        HAS(library_bytes);
        HAS(prepare);
        HAS(take_error);
        HAS(mem_info);
        HAS(copy_device);
        HAS(allow_tf32);
        HAS(gemm);
        HAS(gemm_strided_batched);
        HAS(gemm_bf16);
        HAS(f32_to_bf16);
        HAS(bf16_to_f32);
        HAS(gemm_f16);
        HAS(f32_to_f16);
        HAS(f16_to_f32);
        HAS(gemm_bf16_strided_batched);
        HAS(gemm_f16_strided_batched);
        HAS(matmul_forward);
        HAS(matmul_backward);
        HAS(bias_add_forward);
        HAS(bias_add_backward);
        HAS(bias_add_grouped_forward);
        HAS(bias_add_grouped_backward);
        HAS(layernorm_forward);
        HAS(layernorm_backward);
        HAS(layernorm_grouped_forward);
        HAS(layernorm_grouped_backward);
        HAS(gelu_forward);
        HAS(gelu_backward);
        HAS(bias_gelu_half_forward);
        HAS(bias_half_round_forward);
        HAS(residual_layernorm_forward);
        HAS(softmax_forward);
        HAS(softmax_backward);
        HAS(attention_forward);
        HAS(attention_backward);
        HAS(embedding_forward);
        HAS(embedding_forward_bf16);
        HAS(embedding_forward_f16);
        HAS(embedding_backward);
        HAS(residual_forward);
        HAS(residual_backward);
        HAS(dropout_forward);
        HAS(dropout_backward);
        HAS(mean_pool_forward);
        HAS(mean_pool_backward);
        HAS(l2norm_forward);
        HAS(l2norm_backward);
        HAS(relu_forward);
        HAS(relu_backward);
        HAS(mtsa_guide_forward);
        HAS(mtsa_guide_backward);
        HAS(gate_add_forward);
        HAS(gate_add_backward);
        HAS(crossentropy_forward);
        HAS(crossentropy_backward);
        HAS(mse_forward);
        HAS(mse_backward);
        HAS(adamw_update);
        HAS(sumsq);
        HAS(scale);
#undef HAS
        char desc[256];
        be->set_threads(2);
        be->describe(desc, sizeof desc);
        cr_expect(strstr(desc, "2 ") != NULL, "describe does not show the thread count: %s", desc);
    }
}

/* The half-precision conversions every backend shares (kernels.h), against the compiler's own
 * IEEE binary16 (_Float16, round to nearest even) on a spread of all 2^32 float patterns, and
 * exhaustively back; bf16 against its definition (the top 16 bits, rounded to nearest even). */
Test(kernels, half_conversions_match_ieee)
{
    long bad16 = 0, badbf = 0;
    for (uint64_t i = 0; i < (1ull << 32); i += 257) {
        uint32_t u = (uint32_t)i;
        float f;
        memcpy(&f, &u, sizeof f);
        uint16_t mine = sherl_f32_to_f16(f), want;
        _Float16 h = (_Float16)f;
        memcpy(&want, &h, sizeof want);
        if (isnan(f) ? ((mine & 0x7c00u) != 0x7c00u || !(mine & 0x3ffu)) : mine != want)
            bad16++;
        /* bf16: exactly representable results round-trip, and the rounding error is at most half
         * a bf16 step, ties to even */
        if (!isnan(f) && !isinf(f)) {
            uint16_t b = sherl_f32_to_bf16(f);
            double back = sherl_bf16_to_f32(b), err = fabs(back - (double)f);
            /* a bf16 step: 2^(exponent - 7), or 2^-133 below FLT_MIN (zero included) */
            double step = fabsf(f) < FLT_MIN ? ldexp(1.0, -133) : ldexp(1.0, ilogb(f) - 7);
            if (!isinf(back) && (err > step / 2 || (err == step / 2 && (b & 1))))
                badbf++;
        }
    }
    cr_expect_eq(bad16, 0, "%ld float -> fp16 conversions differ from _Float16", bad16);
    cr_expect_eq(badbf, 0, "%ld float -> bf16 conversions are not round-to-nearest-even", badbf);
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t hh = (uint16_t)h;
        _Float16 x;
        memcpy(&x, &hh, sizeof x);
        float want = (float)x, got = sherl_f16_to_f32(hh);
        cr_assert(!memcmp(&want, &got, sizeof want) || (isnan(want) && isnan(got)),
                  "fp16 %04x -> %a, want %a", h, (double)got, (double)want);
        float wb = 0, gb = sherl_bf16_to_f32(hh);
        uint32_t wbits = (uint32_t)h << 16;
        memcpy(&wb, &wbits, sizeof wb);
        cr_assert(!memcmp(&wb, &gb, sizeof wb), "bf16 %04x widened wrongly", h);
    }
}
