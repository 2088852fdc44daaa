/* Every op of every available backend against a plain double-precision reference loop, and
 * every backward op against central finite differences of that reference.
 *
 * Backward ops accumulate: each gradient buffer starts with random values g0 and the test
 * checks (result - g0) against the numerical gradient of L = sum(dout . f(x)). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
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
        HAS(gemm);
        HAS(gemm_strided_batched);
        HAS(matmul_forward);
        HAS(matmul_backward);
        HAS(bias_add_forward);
        HAS(bias_add_backward);
        HAS(layernorm_forward);
        HAS(layernorm_backward);
        HAS(gelu_forward);
        HAS(gelu_backward);
        HAS(softmax_forward);
        HAS(softmax_backward);
        HAS(attention_forward);
        HAS(attention_backward);
        HAS(embedding_forward);
        HAS(embedding_backward);
        HAS(residual_forward);
        HAS(residual_backward);
        HAS(dropout_forward);
        HAS(dropout_backward);
        HAS(mean_pool_forward);
        HAS(mean_pool_backward);
        HAS(l2norm_forward);
        HAS(l2norm_backward);
#undef HAS
        char desc[256];
        be->set_threads(2);
        be->describe(desc, sizeof desc);
        cr_expect(strstr(desc, "2 ") != NULL, "describe does not show the thread count: %s", desc);
    }
}
