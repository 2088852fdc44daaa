/* gpu_ops: every op of one backend against the CPU backend.
 *
 *   gpu_ops [--backend NAME] [--require] [--self-test] [--filter SUBSTR|^PREFIX] [-v]
 *
 * Each test makes fresh random inputs with its own fixed-seed generator, uploads the same bytes
 * to the CPU backend (the reference) and to the backend under test, runs the op on both and
 * compares what comes back through copy_to_host (the tested backend's memory need not be
 * readable by the host). Outputs start poisoned (a NaN pattern), so an element an op fails to
 * write shows up as a NaN mismatch; gradients start from the same small random values on both
 * sides, so an op that overwrites instead of accumulating fails. Per tensor the error is
 * max |got - ref| / max |ref|; fp32 ops must agree to TOL_F32.
 *
 * Plain C (no Criterion): it has to build on the GPU machine's image, which has none. Without a
 * usable CUDA backend the default run reports how many tests it did not run and exits 0
 * (--require: exits 1; the emulated CUDA build, gpu_ops_emu, always has its device).
 * --backend cpu runs the harness against the CPU itself (all must pass; CI runs it under
 * ASan/UBSan), and --self-test proves the harness can fail: it runs mutated copies of the CPU
 * table, each with one op broken slightly, and every mutation must be caught. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* fp32 ops: the CUDA backend computes its products without TF32, so both sides are fp32 with
 * different summation orders, far inside this relative bound. */
#define TOL_F32 1e-5
/* bf16 products against the CPU's exact fp32 product of the same bf16 inputs */
#define TOL_BF16 1e-2
/* sumsq, compared as a double */
#define TOL_SUMSQ 1e-6
/* Initial gradient magnitude. Small next to the gradients the ops add, so the error measure
 * (relative to the tensor's largest entry) stays sensitive to the increment, yet far above the
 * tolerance, so an op that overwrites instead of accumulating still fails. */
#define GRAD0 1e-2f
/* Elementwise sizes: odd, above the CPU's parallel threshold, many GPU blocks with a tail. */
#define NBIG 100003
/* A quiet NaN with a payload no op computes: what poisoned outputs hold before the op. */
#define POISON_F32 0x7fc0deadu
#define POISON_U16 0xffffu
/* Poison after every backend buffer: a kernel whose last block runs past n writes into it (and
 * one that reads past n reads NaN). A few blocks' worth of floats. */
#define GUARD_BYTES 4096

enum { REF = 0, GOT = 1 }; /* the two sides: the CPU reference and the backend under test */

/* One tensor on both backends; a NULL pair stands for a NULL argument (a frozen gradient). */
typedef struct {
    void *p[2];
} pair;

static const pair NONE = {{NULL, NULL}};

/* A buffer to free when the test ends: backend memory, or host memory when be is NULL. Backend
 * buffers are followed by GUARD_BYTES of poison that must still be there at the end. */
typedef struct {
    void *p;
    const sherl_backend *be;
    size_t bytes;
} owned;

/* One running test: its backends, random stream, buffers and verdict. */
typedef struct {
    const char *name;
    const sherl_backend *bk[2];
    uint64_t rng;
    owned *own;
    size_t nown, cap;
    int checks;        /* comparisons made: a test that compares nothing fails */
    int failed;
    double err, tol;   /* the comparison that came closest to (or went furthest past) its tol */
    double ratio;      /* its err / tol */
    int verbose, quiet;
} tcase;

/* Runs one statement on both sides: `be` is that side's backend, P(x) the tensor x there. */
#define ON_BOTH(tc, stmt)                                                                    \
    for (int side_ = 0; side_ < 2; side_++) {                                                \
        const sherl_backend *be = (tc)->bk[side_];                                           \
        stmt;                                                                                \
    }
#define P(x) ((x).p[side_])
#define PF(x) ((float *)(x).p[side_])

/* ------------------------------------------------------------------------------------------
 * verdicts */

static void die(const char *what)
{
    fprintf(stderr, "gpu_ops: %s\n", what);
    exit(1);
}

/* The first failure of a test prints its FAIL line (all of them with -v); the test is failed. */
static void fail(tcase *tc, const char *fmt, ...)
{
    if ((!tc->failed && !tc->quiet) || tc->verbose) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL %s ", tc->name);
        vprintf(fmt, ap);
        putchar('\n');
        va_end(ap);
    }
    tc->failed = 1;
}

/* Waits for the tested backend and collects any failure its calls recorded; 0 when there was
 * one (the test has then failed with its message). */
static int settle(tcase *tc, const char *op)
{
    char msg[512];
    tc->bk[GOT]->synchronize();
    if (tc->bk[GOT]->take_error(msg, sizeof msg) != 0) {
        fail(tc, "%s: %s", op, msg);
        return 0;
    }
    return 1;
}

/* Records one comparison of `tensor`: err against tol (NaN fails), with where and what. */
static void verdict(tcase *tc, const char *tensor, double err, double tol, size_t at,
                    const char *detail)
{
    tc->checks++;
    double ratio = err == 0.0 ? 0.0 : tol > 0.0 ? err / tol : INFINITY;
    if (isnan(ratio))
        ratio = INFINITY;
    if (ratio > tc->ratio) {
        tc->ratio = ratio;
        tc->err = err;
        tc->tol = tol;
    }
    if (tc->verbose)
        printf("     %s %s err=%.3g tol=%g\n", tc->name, tensor, err, tol);
    if (!(err <= tol))
        fail(tc, "%s err=%.3g tol=%g at index %zu (%s)", tensor, err, tol, at, detail);
}

/* ------------------------------------------------------------------------------------------
 * memory: everything a test allocates is freed when it ends */

static void keep(tcase *tc, void *p, const sherl_backend *be, size_t bytes)
{
    if (tc->nown == tc->cap) {
        tc->cap = tc->cap ? 2 * tc->cap : 64;
        tc->own = realloc(tc->own, tc->cap * sizeof *tc->own);
        if (!tc->own)
            die("out of host memory");
    }
    tc->own[tc->nown++] = (owned){p, be, bytes};
}

static void release(tcase *tc)
{
    while (tc->nown > 0) {
        owned *o = &tc->own[--tc->nown];
        if (o->be)
            o->be->free(o->p);
        else
            free(o->p);
    }
    free(tc->own);
    tc->own = NULL;
    tc->cap = 0;
}

static void *host(tcase *tc, size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p)
        die("out of host memory");
    keep(tc, p, NULL, bytes);
    return p;
}

/* A name for a tensor in one variant of a test, e.g. "dinp[want=3]"; lives as long as the test. */
static const char *label(tcase *tc, const char *fmt, ...)
{
    char *s = host(tc, 96);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, 96, fmt, ap);
    va_end(ap);
    return s;
}

/* The guard's contents: poison floats. */
static const void *guard_pattern(void)
{
    static uint32_t words[GUARD_BYTES / 4];
    if (words[0] != POISON_F32)
        for (size_t i = 0; i < GUARD_BYTES / 4; i++)
            words[i] = POISON_F32;
    return words;
}

/* `bytes` on both sides, each followed by its guard. */
static pair pair_alloc(tcase *tc, size_t bytes)
{
    pair x;
    for (int s = 0; s < 2; s++) {
        x.p[s] = tc->bk[s]->alloc(bytes + GUARD_BYTES);
        if (!x.p[s]) {
            fail(tc, "%s: alloc of %zu bytes failed", tc->bk[s]->name, bytes + GUARD_BYTES);
            die("cannot go on without memory");
        }
        keep(tc, x.p[s], tc->bk[s], bytes);
        tc->bk[s]->copy_to_device((char *)x.p[s] + bytes, guard_pattern(), GUARD_BYTES);
    }
    return x;
}

/* Every backend buffer's guard must be as pair_alloc left it. */
static void check_guards(tcase *tc)
{
    static unsigned char seen[GUARD_BYTES];
    const unsigned char *want = guard_pattern();
    for (size_t i = 0; i < tc->nown; i++) {
        owned o = tc->own[i];
        if (!o.be)
            continue;
        o.be->copy_to_host(seen, (const char *)o.p + o.bytes, GUARD_BYTES);
        if (memcmp(seen, want, GUARD_BYTES) != 0) {
            size_t at = 0;
            while (seen[at] == want[at])
                at++;
            fail(tc, "%s: an op wrote past the end of a %zu-byte buffer (at byte %zu)",
                 o.be->name, o.bytes, o.bytes + at);
        }
    }
}

/* The same host bytes on both sides. */
static pair up(tcase *tc, const void *h, size_t bytes)
{
    pair x = pair_alloc(tc, bytes);
    for (int s = 0; s < 2; s++)
        tc->bk[s]->copy_to_device(x.p[s], h, bytes);
    return x;
}

/* A host copy of one side of x. */
static void *fetch(tcase *tc, pair x, int side, size_t bytes)
{
    void *h = host(tc, bytes);
    tc->bk[side]->copy_to_host(h, x.p[side], bytes);
    return h;
}

/* A tensor an op made on the reference side only (saved statistics for a backward), now the
 * same on both sides: backward tests then do not depend on how well the forward agreed. */
static pair shared(tcase *tc, pair x, size_t bytes)
{
    return up(tc, fetch(tc, x, REF, bytes), bytes);
}

/* ------------------------------------------------------------------------------------------
 * inputs: a xorshift64* stream per test, seeded from its name, so a test's inputs do not
 * depend on which other tests ran (--filter reproduces a failure exactly) */

static uint64_t seed_of(const char *name)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h | 1;
}

static uint64_t next(tcase *tc)
{
    tc->rng ^= tc->rng >> 12;
    tc->rng ^= tc->rng << 25;
    tc->rng ^= tc->rng >> 27;
    return tc->rng * 0x2545F4914F6CDD1Dull;
}

static double unit(tcase *tc) { return (double)(next(tc) >> 11) * 0x1.0p-53; }
static int below(tcase *tc, int n) { return (int)(next(tc) % (uint64_t)n); }
static float uniform(tcase *tc, float lo, float hi) { return (float)(lo + (hi - lo) * unit(tc)); }

static float *host_rand(tcase *tc, size_t n, float lo, float hi)
{
    float *v = host(tc, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = uniform(tc, lo, hi);
    return v;
}

/* Random signs, magnitudes in [mag/10, mag]: never zero, so "zero" can mean "dropped". */
static float *host_nonzero(tcase *tc, size_t n, float mag)
{
    float *v = host(tc, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float m = mag * (0.1f + 0.9f * (float)unit(tc));
        v[i] = next(tc) & 1 ? m : -m;
    }
    return v;
}

static pair up_rand(tcase *tc, size_t n, float lo, float hi)
{
    return up(tc, host_rand(tc, n, lo, hi), n * sizeof(float));
}

/* A gradient buffer before a backward op: small random values, the same on both sides. */
static pair up_grad(tcase *tc, size_t n)
{
    return up(tc, host_nonzero(tc, n, GRAD0), n * sizeof(float));
}

static pair up_poison(tcase *tc, size_t n)
{
    uint32_t *v = host(tc, n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++)
        v[i] = POISON_F32;
    return up(tc, v, n * sizeof(uint32_t));
}

/* An additive key mask [B,T] as engine/bert.c builds it: 0 for real keys, -FLT_MAX for padding,
 * here a tail of padding that grows with b plus one masked key inside. Key 0 is always real,
 * so no row is all padding. With `soft`, real keys get small negative biases too, which
 * softmax must add like any other mask value. */
static float *host_key_mask(tcase *tc, int B, int T, int soft)
{
    float *m = host(tc, sizeof(float) * (size_t)B * T);
    for (int b = 0; b < B; b++) {
        int real = T - (b * T) / (2 * B);
        for (int t = 0; t < T; t++)
            m[(size_t)b * T + t] = t < real ? (soft ? uniform(tc, -2.0f, 0.0f) : 0.0f) : -FLT_MAX;
        if (real > 2)
            m[(size_t)b * T + 1 + below(tc, real - 1)] = -FLT_MAX;
    }
    return m;
}

/* The same pattern as an attention mask of 0/1 tokens (mean pooling). */
static int32_t *host_token_mask(tcase *tc, int B, int T)
{
    float *km = host_key_mask(tc, B, T, 0);
    int32_t *m = host(tc, sizeof(int32_t) * (size_t)B * T);
    for (size_t i = 0; i < (size_t)B * T; i++)
        m[i] = km[i] == 0.0f;
    return m;
}

/* ------------------------------------------------------------------------------------------
 * comparisons */

/* n floats: max |got - ref| / max |ref| over the finite reference entries. NaN must meet NaN
 * (any payload) and an infinity its equal; anything else against them is an infinite error.
 * A NaN the reference computed (not the poison of untouched padding) fails unless nan_ok: NaN
 * matches NaN, so inputs that make the reference NaN would leave nothing compared.
 * A NULL pair (an argument passed as NULL) was not written and is skipped. */
static void compare_f32(tcase *tc, const char *tensor, pair x, size_t n, double tol, int nan_ok)
{
    if (!x.p[REF])
        return;
    const float *want = fetch(tc, x, REF, n * sizeof(float));
    const float *got = fetch(tc, x, GOT, n * sizeof(float));
    if (!settle(tc, "copy_to_host"))
        return;
    double scale = 0.0;
    size_t computed_nan = 0, first_nan = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &want[i], sizeof bits);
        if (isnan(want[i]) && bits != POISON_F32 && computed_nan++ == 0)
            first_nan = i;
        if (isfinite(want[i]) && fabs(want[i]) > scale)
            scale = fabs(want[i]);
    }
    if (computed_nan && !nan_ok) {
        fail(tc, "%s: the reference computed %zu NaN (first at index %zu): bad test inputs",
             tensor, computed_nan, first_nan);
        return;
    }
    if (scale < 1e-30)
        scale = 1e-30;
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e;
        if (isnan(want[i]) || isnan(got[i]))
            e = isnan(want[i]) && isnan(got[i]) ? 0.0 : INFINITY;
        else if (want[i] == got[i])
            e = 0.0;
        else
            e = fabs((double)got[i] - want[i]) / scale;
        if (e > worst) {
            worst = e;
            at = i;
        }
    }
    char detail[96];
    snprintf(detail, sizeof detail, "got %.9g want %.9g", n ? got[at] : 0.0, n ? want[at] : 0.0);
    verdict(tc, tensor, worst, tol, at, detail);
}

static void check_half_steps(tcase *tc, const char *tensor, pair x, size_t n, int steps);
static pair up_half_poison(tcase *tc, size_t n);

static void check_f32(tcase *tc, const char *tensor, pair x, size_t n, double tol)
{
    compare_f32(tc, tensor, x, n, tol, 0);
}

/* Bit for bit, in elements of `size` bytes (1, 2 or 4); err is the number of mismatches. */
static void check_exact(tcase *tc, const char *tensor, pair x, size_t n, size_t size)
{
    const unsigned char *want = fetch(tc, x, REF, n * size);
    const unsigned char *got = fetch(tc, x, GOT, n * size);
    if (!settle(tc, "copy_to_host"))
        return;
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(got + i * size, want + i * size, size) != 0 && bad++ == 0)
            at = i;
    uint32_t g = 0, w = 0;
    if (bad) {
        for (size_t b = size; b-- > 0;) { /* little-endian element as a number */
            g = g << 8 | got[at * size + b];
            w = w << 8 | want[at * size + b];
        }
    }
    char detail[96];
    snprintf(detail, sizeof detail, "got 0x%0*x want 0x%0*x", (int)(2 * size), (unsigned)g,
             (int)(2 * size), (unsigned)w);
    verdict(tc, tensor, (double)bad, 0.0, at, detail);
}

/* Dropout masks: element i counts as dropped when it still equals base[i] (0 when base is NULL)
 * after the op. The dropped sets must be identical; err is the number of elements that differ. */
static void check_mask(tcase *tc, const char *tensor, pair x, const float *base, size_t n)
{
    const float *want = fetch(tc, x, REF, n * sizeof(float));
    const float *got = fetch(tc, x, GOT, n * sizeof(float));
    if (!settle(tc, "copy_to_host"))
        return;
    size_t bad = 0, at = 0, dropped = 0;
    for (size_t i = 0; i < n; i++) {
        float b = base ? base[i] : 0.0f;
        int dw = want[i] == b, dg = got[i] == b;
        dropped += dw;
        if (dw != dg && bad++ == 0)
            at = i;
    }
    char detail[96];
    snprintf(detail, sizeof detail, "%zu of %zu differ; the reference dropped %zu", bad, n,
             dropped);
    verdict(tc, tensor, (double)bad, 0.0, at, detail);
}

/* A scalar the op returned to the host: |got - ref| / |ref|. */
static void check_scalar(tcase *tc, const char *tensor, double got, double want, double tol)
{
    double e;
    if (isnan(got) || isnan(want))
        e = isnan(got) && isnan(want) ? 0.0 : INFINITY;
    else
        e = got == want ? 0.0 : fabs(got - want) / fmax(fabs(want), 1e-30);
    char detail[96];
    snprintf(detail, sizeof detail, "got %.17g want %.17g", got, want);
    verdict(tc, tensor, e, tol, 0, detail);
}

/* ------------------------------------------------------------------------------------------
 * memory and conversions */

/* alloc hands out zeroed memory; copy_device copies any byte count; zero clears exactly the
 * range it is given (here a range inside a buffer, so an overrun changes its neighbours). */
static void t_memory(tcase *tc, int arg)
{
    const size_t n = 1001, bytes = 4001; /* not a multiple of 4 */
    pair z = pair_alloc(tc, n * sizeof(float));
    check_exact(tc, "alloc", z, n * sizeof(float), 1);

    pair src = up_rand(tc, n, -1, 1), dst = up_poison(tc, n);
    ON_BOTH(tc, be->copy_device(P(dst), P(src), bytes));
    if (!settle(tc, "copy_device"))
        return;
    check_exact(tc, "copy_device", dst, n * sizeof(float), 1);

    ON_BOTH(tc, be->zero(PF(src) + 100, 537 * sizeof(float)));
    if (!settle(tc, "zero"))
        return;
    check_exact(tc, "zero", src, n, sizeof(float));
}

/* Random floats with the awkward cases up front: NaNs (quiet, signalling, negative), infinities,
 * signed zeros, subnormals, values that round to infinity, exact ties to even in both
 * directions; then a run of random bit patterns, which covers every class again. */
/* arg 0: bf16, arg 1: fp16 (then also its own edges: the largest finite 65504, 65519.99 and 65520
 * on either side of the rounding to inf, the smallest subnormal 2^-24, the ties 2^-25 and
 * 3 * 2^-25, the smallest normal 2^-14 and just below it). */
static void t_f32_to_half(tcase *tc, int arg)
{
    static const uint32_t special[] = {
        0x7fc00000u, 0xffc00001u, 0x7f800001u, 0xff800001u, 0x7fffffffu, /* NaNs */
        0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u,              /* inf, zeros */
        0x00000001u, 0x807fffffu, 0x00008000u, 0x00018000u,              /* subnormals, ties */
        0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u,                           /* round to inf */
        0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf818000u, /* ties, near ties */
    };
    static const uint32_t special16[] = {
        0x477fe000u, 0x477fefffu, 0x477ff000u, 0xc77ff000u, 0x33800000u, 0x33000000u,
        0x33c00000u, 0xb3c00000u, 0x38800000u, 0x387fffffu, 0x38000000u, 0x3f801000u,
        0x3f803000u, 0x3f801001u,
    };
    const size_t n = 20011, nspecial = sizeof special / sizeof special[0];
    const size_t n16 = sizeof special16 / sizeof special16[0];
    float *x = host_rand(tc, n, -3, 3);
    memcpy(x, special, sizeof special);
    if (arg)
        memcpy(x + nspecial, special16, sizeof special16);
    for (size_t i = nspecial + n16; i < nspecial + n16 + 4000; i++) {
        uint32_t bits = (uint32_t)(next(tc) >> 32);
        memcpy(&x[i], &bits, sizeof bits);
    }
    pair in = up(tc, x, n * sizeof(float));
    uint16_t *poison = host(tc, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        poison[i] = POISON_U16;
    pair out = up(tc, poison, n * sizeof(uint16_t));
    if (arg) {
        ON_BOTH(tc, be->f32_to_f16(P(out), P(in), n));
    } else {
        ON_BOTH(tc, be->f32_to_bf16(P(out), P(in), n));
    }
    if (!settle(tc, arg ? "f32_to_f16" : "f32_to_bf16"))
        return;
    check_exact(tc, arg ? "f16" : "bf16", out, n, sizeof(uint16_t));
}

/* Every one of the 65536 bf16 patterns, then some more: widening must be exact, NaN payloads
 * included. */
static void t_half_to_f32(tcase *tc, int arg)
{
    const size_t n = 65536 + 37;
    uint16_t *h = host(tc, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        h[i] = i < 65536 ? (uint16_t)i : (uint16_t)next(tc);
    pair in = up(tc, h, n * sizeof(uint16_t)), out = up_poison(tc, n);
    if (arg) {
        ON_BOTH(tc, be->f16_to_f32(P(out), P(in), n));
    } else {
        ON_BOTH(tc, be->bf16_to_f32(P(out), P(in), n));
    }
    if (!settle(tc, arg ? "f16_to_f32" : "bf16_to_f32"))
        return;
    check_exact(tc, "f32", out, n, sizeof(float));
}

/* ------------------------------------------------------------------------------------------
 * matrix products */

/* Leading dimensions of op(A)[M,K], op(B)[K,N], C[M,N] wider than the matrices, so an op that
 * assumes packed rows reads and writes the wrong elements; the padding of C must come back as
 * it went in. */
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    size_t na, nb, nc;
} gemm_shape;

static gemm_shape gemm_shape_of(int ta, int tb, int M, int N, int K)
{
    gemm_shape g = {ta, tb, M, N, K, (ta ? M : K) + 3, (tb ? K : N) + 5, N + 2, 0, 0, 0};
    g.na = (size_t)(ta ? K : M) * g.lda;
    g.nb = (size_t)(tb ? N : K) * g.ldb;
    g.nc = (size_t)M * g.ldc;
    return g;
}

/* C = 0.75 op(A) op(B) + beta C. beta = 0 starts C poisoned: C must be written, never read. */
static void gemm_case(tcase *tc, int ta, int tb, int M, int N, int K, float beta)
{
    gemm_shape g = gemm_shape_of(ta, tb, M, N, K);
    pair a = up_rand(tc, g.na, -1, 1), b = up_rand(tc, g.nb, -1, 1);
    pair c = beta == 0.0f ? up_poison(tc, g.nc) : up_rand(tc, g.nc, -1, 1);
    ON_BOTH(tc, be->gemm(ta, tb, M, N, K, 0.75f, P(a), g.lda, P(b), g.ldb, beta, P(c), g.ldc));
    if (!settle(tc, "gemm"))
        return;
    check_f32(tc, label(tc, "C[ta=%d,tb=%d,beta=%g]", ta, tb, beta), c, g.nc, TOL_F32);
}

/* Every transpose pair, writing and accumulating; `big` spans many tiles of a GPU GEMM. */
static void t_gemm(tcase *tc, int big)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                if (big)
                    gemm_case(tc, ta, tb, 259, 385, 131, (float)acc);
                else
                    gemm_case(tc, ta, tb, 37, 83, 45, (float)acc);
            }
}

/* Half operands (f16: fp16, else bf16): the inputs are rounded on the host, the same bits go
 * to both sides. */
static pair up_half(tcase *tc, size_t n, int f16)
{
    const float *x = host_rand(tc, n, -1, 1);
    uint16_t *h = host(tc, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        h[i] = f16 ? sherl_f32_to_f16(x[i]) : sherl_f32_to_bf16(x[i]);
    return up(tc, h, n * sizeof(uint16_t));
}

static void gemm_half_case(tcase *tc, int f16, int ta, int tb, int M, int N, int K, float beta)
{
    gemm_shape g = gemm_shape_of(ta, tb, M, N, K);
    pair a = up_half(tc, g.na, f16), b = up_half(tc, g.nb, f16);
    pair c = beta == 0.0f ? up_poison(tc, g.nc) : up_rand(tc, g.nc, -1, 1);
    if (f16) {
        ON_BOTH(tc, be->gemm_f16(ta, tb, M, N, K, 0.75f, P(a), g.lda, P(b), g.ldb, beta, P(c),
                                 g.ldc));
    } else {
        ON_BOTH(tc, be->gemm_bf16(ta, tb, M, N, K, 0.75f, P(a), g.lda, P(b), g.ldb, beta, P(c),
                                  g.ldc));
    }
    if (!settle(tc, f16 ? "gemm_f16" : "gemm_bf16"))
        return;
    check_f32(tc, label(tc, "C[ta=%d,tb=%d,beta=%g]", ta, tb, beta), c, g.nc, TOL_BF16);
}

/* arg: bit 0 big, bit 1 fp16 */
static void t_gemm_half(tcase *tc, int arg)
{
    int big = arg & 1, f16 = (arg >> 1) & 1;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                if (big)
                    gemm_half_case(tc, f16, ta, tb, 259, 385, 131, (float)acc);
                else
                    gemm_half_case(tc, f16, ta, tb, 37, 83, 45, (float)acc);
            }
}

/* Batches with gaps between the matrices (strides beyond their extent): the gaps of C must come
 * back untouched. */
static void gsb_case(tcase *tc, int ta, int tb, float beta)
{
    const int batch = 3;
    gemm_shape g = gemm_shape_of(ta, tb, 19, 23, 21);
    long long sa = (long long)g.na + 7, sb = (long long)g.nb + 11, sc = (long long)g.nc + 5;
    size_t na = (size_t)sa * batch, nb = (size_t)sb * batch, nc = (size_t)sc * batch;
    pair a = up_rand(tc, na, -1, 1), b = up_rand(tc, nb, -1, 1);
    pair c = beta == 0.0f ? up_poison(tc, nc) : up_rand(tc, nc, -1, 1);
    ON_BOTH(tc, be->gemm_strided_batched(ta, tb, g.M, g.N, g.K, -0.5f, P(a), g.lda, sa, P(b),
                                         g.ldb, sb, beta, P(c), g.ldc, sc, batch));
    if (!settle(tc, "gemm_strided_batched"))
        return;
    check_f32(tc, label(tc, "C[ta=%d,tb=%d,beta=%g]", ta, tb, beta), c, nc, TOL_F32);
}

static void t_gsb_small(tcase *tc, int arg)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++)
                gsb_case(tc, ta, tb, (float)acc);
}

/* The products of attention on one sequence as strided views of a packed qkv[T,3C], heads HS
 * apart inside each row: scores_h = q_h k_h^T, out_h = P_h v_h written interleaved into
 * out[T,C], and the backward's transposed forms dv_h += P_h^T dout_h, dk_h += dS_h^T q_h. */
static void t_gsb_attention(tcase *tc, int arg)
{
    const int T = 130, NH = 4, HS = 64, C = NH * HS, C3 = 3 * C;
    const long long TT = (long long)T * T;
    pair qkv = up_rand(tc, (size_t)T * C3, -1, 1), probs = up_rand(tc, (size_t)NH * TT, 0, 1);
    pair dout = up_rand(tc, (size_t)T * C, -1, 1), dqkv = up_grad(tc, (size_t)T * C3);
    pair scores = up_poison(tc, (size_t)NH * TT), out = up_poison(tc, (size_t)T * C);

    ON_BOTH(tc, be->gemm_strided_batched(0, 1, T, T, HS, 0.125f, PF(qkv), C3, HS, PF(qkv) + C, C3,
                                         HS, 0.0f, P(scores), T, TT, NH));
    ON_BOTH(tc, be->gemm_strided_batched(0, 0, T, HS, T, 1.0f, P(probs), T, TT, PF(qkv) + 2 * C,
                                         C3, HS, 0.0f, P(out), C, HS, NH));
    ON_BOTH(tc, be->gemm_strided_batched(1, 0, T, HS, T, 1.0f, P(probs), T, TT, P(dout), C, HS,
                                         1.0f, PF(dqkv) + 2 * C, C3, HS, NH));
    ON_BOTH(tc, be->gemm_strided_batched(1, 0, T, HS, T, 1.0f, P(probs), T, TT, P(qkv), C3, HS,
                                         1.0f, PF(dqkv) + C, C3, HS, NH));
    if (!settle(tc, "gemm_strided_batched"))
        return;
    check_f32(tc, "scores", scores, (size_t)NH * TT, TOL_F32);
    check_f32(tc, "out", out, (size_t)T * C, TOL_F32);
    check_f32(tc, "dqkv", dqkv, (size_t)T * C3, TOL_F32);
}

/* Half operands in strided batches (f16: fp16, else bf16), with gaps between the matrices as in
 * gsb_case; shared_b: every batch multiplies the same B (stride 0, as one weight applied to K
 * taps). alpha -0.5, and beta 1 accumulates into C. */
static void gsb_half_case(tcase *tc, int f16, int ta, int tb, int M, int N, int K, int batch,
                          float beta, int shared_b)
{
    gemm_shape g = gemm_shape_of(ta, tb, M, N, K);
    long long sa = (long long)g.na + 7, sb = shared_b ? 0 : (long long)g.nb + 11;
    long long sc = (long long)g.nc + 5;
    size_t na = (size_t)sa * batch, nb = shared_b ? g.nb : (size_t)sb * batch;
    size_t nc = (size_t)sc * batch;
    pair a = up_half(tc, na, f16), b = up_half(tc, nb, f16);
    pair c = beta == 0.0f ? up_poison(tc, nc) : up_rand(tc, nc, -1, 1);
    if (f16) {
        ON_BOTH(tc, be->gemm_f16_strided_batched(ta, tb, M, N, K, -0.5f, P(a), g.lda, sa, P(b),
                                                 g.ldb, sb, beta, P(c), g.ldc, sc, batch));
    } else {
        ON_BOTH(tc, be->gemm_bf16_strided_batched(ta, tb, M, N, K, -0.5f, P(a), g.lda, sa, P(b),
                                                  g.ldb, sb, beta, P(c), g.ldc, sc, batch));
    }
    if (!settle(tc, f16 ? "gemm_f16_strided_batched" : "gemm_bf16_strided_batched"))
        return;
    check_f32(tc, label(tc, "C[ta=%d,tb=%d,beta=%g,shared_b=%d]", ta, tb, beta, shared_b), c, nc,
              TOL_BF16);
}

/* arg: bit 0 big, bit 1 fp16. Every transpose pair, writing and accumulating; the small shapes
 * also with a shared B. */
static void t_gsb_half(tcase *tc, int arg)
{
    int big = arg & 1, f16 = (arg >> 1) & 1;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                if (big) {
                    gsb_half_case(tc, f16, ta, tb, 259, 385, 131, 3, (float)acc, 0);
                } else {
                    gsb_half_case(tc, f16, ta, tb, 19, 23, 21, 3, (float)acc, 0);
                    gsb_half_case(tc, f16, ta, tb, 19, 23, 21, 4, (float)acc, 1);
                }
            }
}

/* ------------------------------------------------------------------------------------------
 * Linear and bias */

typedef struct {
    int N, C, OC;
} linear_shape;

static linear_shape linear_of(int big)
{
    return big ? (linear_shape){260, 257, 771} : (linear_shape){37, 83, 45};
}

/* arg: 0 no bias, 1 bias, 2 bias at the bigger shape */
static void t_matmul_forward(tcase *tc, int arg)
{
    linear_shape s = linear_of(arg == 2);
    pair inp = up_rand(tc, (size_t)s.N * s.C, -1, 1), w = up_rand(tc, (size_t)s.OC * s.C, -1, 1);
    pair bias = arg ? up_rand(tc, s.OC, -1, 1) : NONE, out = up_poison(tc, (size_t)s.N * s.OC);
    ON_BOTH(tc, be->matmul_forward(P(out), P(inp), P(w), P(bias), s.N, s.C, s.OC));
    if (!settle(tc, "matmul_forward"))
        return;
    check_f32(tc, "out", out, (size_t)s.N * s.OC, TOL_F32);
}

/* Every gradient, then each one left out (frozen input, frozen weight, no bias). */
static void t_matmul_backward(tcase *tc, int big)
{
    static const int wants[] = {7, 6, 5, 3}; /* bits: 1 dinp, 2 dweight, 4 dbias */
    linear_shape s = linear_of(big);
    pair dout = up_rand(tc, (size_t)s.N * s.OC, -1, 1);
    pair inp = up_rand(tc, (size_t)s.N * s.C, -1, 1), w = up_rand(tc, (size_t)s.OC * s.C, -1, 1);
    for (size_t v = 0; v < sizeof wants / sizeof wants[0]; v++) {
        int want = wants[v];
        pair dinp = want & 1 ? up_grad(tc, (size_t)s.N * s.C) : NONE;
        pair dw = want & 2 ? up_grad(tc, (size_t)s.OC * s.C) : NONE;
        pair db = want & 4 ? up_grad(tc, s.OC) : NONE;
        ON_BOTH(tc, be->matmul_backward(P(dinp), P(dw), P(db), P(dout), P(inp), P(w), s.N, s.C,
                                        s.OC));
        if (!settle(tc, "matmul_backward"))
            return;
        check_f32(tc, label(tc, "dinp[want=%d]", want), dinp, (size_t)s.N * s.C, TOL_F32);
        check_f32(tc, label(tc, "dweight[want=%d]", want), dw, (size_t)s.OC * s.C, TOL_F32);
        check_f32(tc, label(tc, "dbias[want=%d]", want), db, s.OC, TOL_F32);
    }
}

/* Widths that are not multiples of 4 and one that is (the CUDA backend's 4-at-a-time path) */
static void t_bias_add_forward(tcase *tc, int arg)
{
    static const int shapes[][2] = {{37, 83}, {1001, 97}, {67, 768}};
    for (int i = 0; i < 3; i++) {
        int N = shapes[i][0], C = shapes[i][1];
        pair x = up_rand(tc, (size_t)N * C, -1, 1), bias = up_rand(tc, C, -1, 1);
        ON_BOTH(tc, be->bias_add_forward(P(x), P(bias), N, C));
        if (!settle(tc, "bias_add_forward"))
            return;
        check_exact(tc, label(tc, "x[N=%d,C=%d]", N, C), x, (size_t)N * C, sizeof(float));
    }
}

static void t_bias_add_backward(tcase *tc, int arg)
{
    static const int shapes[][2] = {{37, 83}, {1001, 97}};
    for (int i = 0; i < 2; i++) {
        int N = shapes[i][0], C = shapes[i][1];
        pair dout = up_rand(tc, (size_t)N * C, -1, 1), dbias = up_grad(tc, C);
        ON_BOTH(tc, be->bias_add_backward(P(dbias), P(dout), N, C));
        if (!settle(tc, "bias_add_backward"))
            return;
        check_f32(tc, label(tc, "dbias[N=%d]", N), dbias, C, TOL_F32);
    }
}

/* Grouped ops: parameter and statistic rows further apart than their width (rounded up to 16,
 * plus 16), so an op that assumes packed rows reads or writes the wrong elements; the padding of
 * gradients and statistics must come back as it went in. */
static long long grouped_stride(int n) { return (long long)((n + 15) / 16 * 16 + 16); }

static void t_bias_add_grouped_forward(tcase *tc, int arg)
{
    /* G, N, C; the last C a multiple of 4 (so is grouped_stride: the 4-at-a-time path) */
    static const int shapes[][3] = {{3, 37, 83}, {4, 1001, 97}, {3, 67, 768}};
    for (int i = 0; i < 3; i++) {
        int G = shapes[i][0], N = shapes[i][1], C = shapes[i][2];
        long long bs = grouped_stride(C);
        size_t n = (size_t)G * N * C;
        pair x = up_rand(tc, n, -1, 1), bias = up_rand(tc, (size_t)G * bs, -1, 1);
        ON_BOTH(tc, be->bias_add_grouped_forward(P(x), P(bias), bs, G, N, C));
        if (!settle(tc, "bias_add_grouped_forward"))
            return;
        check_exact(tc, label(tc, "x[G=%d,N=%d,C=%d]", G, N, C), x, n, sizeof(float));
    }
}

/* big: the engine's shape (12 taps, a chunk of 1200 tokens, side width 384), and many groups
 * whose partial sums would not fit the CUDA backend's column scratch (its one-stage path). */
static void t_bias_add_grouped_backward(tcase *tc, int big)
{
    static const int small[][3] = {{3, 37, 83}, {4, 1001, 97}}, large[][3] = {{12, 1200, 384},
                                                                              {520, 3, 1024}};
    for (int i = 0; i < 2; i++) {
        const int *s = big ? large[i] : small[i];
        int G = s[0], N = s[1], C = s[2];
        long long bs = grouped_stride(C);
        pair dout = up_rand(tc, (size_t)G * N * C, -1, 1), dbias = up_grad(tc, (size_t)G * bs);
        ON_BOTH(tc, be->bias_add_grouped_backward(P(dbias), bs, P(dout), G, N, C));
        if (!settle(tc, "bias_add_grouped_backward"))
            return;
        check_f32(tc, label(tc, "dbias[G=%d,N=%d]", G, N), dbias, (size_t)G * bs, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * LayerNorm, GELU, softmax */

/* Inputs off-centre (mean ~0.5), so a one-pass variance that cancels shows. */
static void t_layernorm_forward(tcase *tc, int big)
{
    static const float epss[] = {1e-5f, 1e-12f};
    const int N = big ? 260 : 37, C = big ? 771 : 83;
    pair inp = up_rand(tc, (size_t)N * C, -1.5f, 2.5f);
    pair w = up_rand(tc, C, -1, 1), b = up_rand(tc, C, -1, 1);
    for (int e = 0; e < 2; e++) {
        pair out = up_poison(tc, (size_t)N * C), mean = up_poison(tc, N), rstd = up_poison(tc, N);
        ON_BOTH(tc, be->layernorm_forward(P(out), P(mean), P(rstd), P(inp), P(w), P(b), N, C,
                                          epss[e]));
        if (!settle(tc, "layernorm_forward"))
            return;
        check_f32(tc, label(tc, "out[eps=%g]", epss[e]), out, (size_t)N * C, TOL_F32);
        check_f32(tc, label(tc, "mean[eps=%g]", epss[e]), mean, N, TOL_F32);
        check_f32(tc, label(tc, "rstd[eps=%g]", epss[e]), rstd, N, TOL_F32);
    }
}

/* The fused sublayer end: res bit for bit (fp32 adds), out, mean and rstd as layernorm_forward,
 * out16 within one half step of the reference's; variants: 0 lin_bias and out16, 1 neither,
 * 2 res written over x (aliased), 3 no res (x then unchanged); arg: the half type. */
static void t_residual_layernorm(tcase *tc, int arg)
{
    const int N = 260, C = 771;
    const size_t NC = (size_t)N * C;
    pair w = up_rand(tc, C, -1, 1), b = up_rand(tc, C, -1, 1);
    for (int variant = 0; variant < 4; variant++) {
        pair x = up_rand(tc, NC, -1.5f, 2.5f), resid = up_rand(tc, NC, -1, 1);
        pair lb = {{NULL, NULL}}, out16 = {{NULL, NULL}};
        if (variant != 1)
            lb = up_rand(tc, C, -1, 1), out16 = up_half_poison(tc, NC);
        pair res = variant == 2 ? x : variant == 3 ? NONE : up_poison(tc, NC);
        pair out = up_poison(tc, NC), mean = up_poison(tc, N), rstd = up_poison(tc, N);
        ON_BOTH(tc, be->residual_layernorm_forward(P(out), P(out16), P(res), P(mean), P(rstd),
                                                   P(x), P(lb), P(resid), P(w), P(b), N, C,
                                                   1e-12f, arg));
        if (!settle(tc, "residual_layernorm_forward"))
            return;
        /* variant 3: x as uploaded, on both (check_exact compares the two backends' copies) */
        check_exact(tc, label(tc, "%s[variant=%d]", variant == 3 ? "x" : "res", variant),
                    variant == 3 ? x : res, NC, sizeof(float));
        check_f32(tc, label(tc, "out[variant=%d]", variant), out, NC, TOL_F32);
        check_f32(tc, label(tc, "mean[variant=%d]", variant), mean, N, TOL_F32);
        check_f32(tc, label(tc, "rstd[variant=%d]", variant), rstd, N, TOL_F32);
        if (variant != 1)
            check_half_steps(tc, label(tc, "out16[variant=%d]", variant), out16, NC, 1);
    }
}

static void t_layernorm_backward(tcase *tc, int big)
{
    static const int wants[] = {7, 6, 1, 3}; /* bits: 1 dinp, 2 dweight, 4 dbias */
    const int N = big ? 260 : 37, C = big ? 771 : 83;
    const size_t NC = (size_t)N * C;
    pair inp = up_rand(tc, NC, -1.5f, 2.5f), dout = up_rand(tc, NC, -1, 1);
    pair w = up_rand(tc, C, -1, 1), b = up_rand(tc, C, -1, 1);
    pair out = up_poison(tc, NC), mean = up_poison(tc, N), rstd = up_poison(tc, N);
    tc->bk[REF]->layernorm_forward(out.p[REF], mean.p[REF], rstd.p[REF], inp.p[REF], w.p[REF],
                                   b.p[REF], N, C, 1e-5f);
    mean = shared(tc, mean, N * sizeof(float));
    rstd = shared(tc, rstd, N * sizeof(float));
    for (size_t v = 0; v < sizeof wants / sizeof wants[0]; v++) {
        int want = wants[v];
        pair dinp = want & 1 ? up_grad(tc, NC) : NONE;
        pair dw = want & 2 ? up_grad(tc, C) : NONE, db = want & 4 ? up_grad(tc, C) : NONE;
        ON_BOTH(tc, be->layernorm_backward(P(dinp), P(dw), P(db), P(dout), P(inp), P(w), P(mean),
                                           P(rstd), N, C));
        if (!settle(tc, "layernorm_backward"))
            return;
        check_f32(tc, label(tc, "dinp[want=%d]", want), dinp, NC, TOL_F32);
        check_f32(tc, label(tc, "dweight[want=%d]", want), dw, C, TOL_F32);
        check_f32(tc, label(tc, "dbias[want=%d]", want), db, C, TOL_F32);
    }
}

/* G LayerNorms, each with its own weight and bias; the statistics with and without (NULL). */
static void t_layernorm_grouped_forward(tcase *tc, int big)
{
    static const float epss[] = {1e-5f, 1e-12f};
    const int G = big ? 12 : 3, N = big ? 260 : 37, C = big ? 771 : 83;
    const long long ps = grouped_stride(C), ss = grouped_stride(N);
    const size_t n = (size_t)G * N * C;
    pair inp = up_rand(tc, n, -1.5f, 2.5f);
    pair w = up_rand(tc, (size_t)G * ps, -1, 1), b = up_rand(tc, (size_t)G * ps, -1, 1);
    for (int v = 0; v < 3; v++) {
        float eps = epss[v & 1];
        int stats = v < 2;
        pair out = up_poison(tc, n);
        pair mean = stats ? up_poison(tc, (size_t)G * ss) : NONE;
        pair rstd = stats ? up_poison(tc, (size_t)G * ss) : NONE;
        ON_BOTH(tc, be->layernorm_grouped_forward(P(out), P(mean), P(rstd), ss, P(inp), P(w),
                                                  P(b), ps, G, N, C, eps));
        if (!settle(tc, "layernorm_grouped_forward"))
            return;
        check_f32(tc, label(tc, "out[eps=%g,stats=%d]", eps, stats), out, n, TOL_F32);
        check_f32(tc, label(tc, "mean[eps=%g]", eps), mean, (size_t)G * ss, TOL_F32);
        check_f32(tc, label(tc, "rstd[eps=%g]", eps), rstd, (size_t)G * ss, TOL_F32);
    }
}

static void ln_grouped_backward_case(tcase *tc, int G, int N, int C, const int *wants, int nwants)
{
    const long long ps = grouped_stride(C), ss = grouped_stride(N);
    const size_t n = (size_t)G * N * C, np = (size_t)G * ps;
    pair inp = up_rand(tc, n, -1.5f, 2.5f), dout = up_rand(tc, n, -1, 1);
    pair w = up_rand(tc, np, -1, 1), b = up_rand(tc, np, -1, 1);
    pair mean = up_poison(tc, (size_t)G * ss), rstd = up_poison(tc, (size_t)G * ss);
    float *out = tc->bk[REF]->alloc(n * sizeof(float)); /* only the statistics are kept */
    if (!out)
        die("cannot go on without memory");
    tc->bk[REF]->layernorm_grouped_forward(out, mean.p[REF], rstd.p[REF], ss, inp.p[REF], w.p[REF],
                                           b.p[REF], ps, G, N, C, 1e-5f);
    tc->bk[REF]->free(out);
    mean = shared(tc, mean, (size_t)G * ss * sizeof(float));
    rstd = shared(tc, rstd, (size_t)G * ss * sizeof(float));
    for (int v = 0; v < nwants; v++) {
        int want = wants[v];
        pair dinp = want & 1 ? up_grad(tc, n) : NONE;
        pair dw = want & 2 ? up_grad(tc, np) : NONE, db = want & 4 ? up_grad(tc, np) : NONE;
        ON_BOTH(tc, be->layernorm_grouped_backward(P(dinp), P(dw), P(db), ps, P(dout), P(inp),
                                                   P(w), P(mean), P(rstd), ss, G, N, C));
        if (!settle(tc, "layernorm_grouped_backward"))
            return;
        check_f32(tc, label(tc, "dinp[G=%d,want=%d]", G, want), dinp, n, TOL_F32);
        check_f32(tc, label(tc, "dweight[G=%d,want=%d]", G, want), dw, np, TOL_F32);
        check_f32(tc, label(tc, "dbias[G=%d,want=%d]", G, want), db, np, TOL_F32);
    }
}

/* arg 0: every gradient, then each left out. 1: the engine's shape (12 taps, 1200 tokens, width
 * 384), all, none but the parameters', dbias alone. 2: 132 groups of 129 rows (two chunks each),
 * whose partial sums would not fit the CUDA backend's column scratch (its one-stage path), the
 * parameter gradients only. */
static void t_layernorm_grouped_backward(tcase *tc, int arg)
{
    static const int wants[] = {7, 6, 1, 3, 4}; /* bits: 1 dinp, 2 dweight, 4 dbias */
    static const int big[] = {7, 6, 4}, params[] = {6, 4};
    if (arg == 0)
        ln_grouped_backward_case(tc, 3, 37, 83, wants, 5);
    else if (arg == 1)
        ln_grouped_backward_case(tc, 12, 1200, 384, big, 3);
    else
        ln_grouped_backward_case(tc, 132, 129, 1000, params, 2);
}

static const size_t elementwise_sizes[] = {37, NBIG};

/* Inputs to +-6: both tails, where erf saturates and 1 + erf cancels. */
static void t_gelu_forward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair inp = up_rand(tc, n, -6, 6), out = up_poison(tc, n);
        ON_BOTH(tc, be->gelu_forward(P(out), P(inp), n));
        if (!settle(tc, "gelu_forward"))
            return;
        check_f32(tc, label(tc, "out[n=%zu]", n), out, n, TOL_F32);
    }
}

static void t_gelu_backward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair inp = up_rand(tc, n, -6, 6), dout = up_rand(tc, n, -1, 1), dinp = up_grad(tc, n);
        ON_BOTH(tc, be->gelu_backward(P(dinp), P(inp), P(dout), n));
        if (!settle(tc, "gelu_backward"))
            return;
        check_f32(tc, label(tc, "dinp[n=%zu]", n), dinp, n, TOL_F32);
    }
}

/* Half bit patterns within `steps` representable values of the reference's (same sign), for
 * results that go through a transcendental before rounding: fp32 erfc may differ in its last
 * bit between backends, and a tie then rounds the other way. err = elements further off. */
static void check_half_steps(tcase *tc, const char *tensor, pair x, size_t n, int steps)
{
    const uint16_t *want = fetch(tc, x, REF, n * sizeof(uint16_t));
    const uint16_t *got = fetch(tc, x, GOT, n * sizeof(uint16_t));
    if (!settle(tc, "copy_to_host"))
        return;
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < n; i++) {
        int same_sign = (got[i] ^ want[i]) < 0x8000u;
        int d = (int)(got[i] & 0x7fffu) - (int)(want[i] & 0x7fffu);
        if (!(same_sign && d <= steps && d >= -steps) && bad++ == 0)
            at = i;
    }
    char detail[96];
    snprintf(detail, sizeof detail, "got 0x%04x want 0x%04x (%zu of %zu more than %d off)",
             n ? got[at] : 0, n ? want[at] : 0, bad, n, steps);
    verdict(tc, tensor, (double)bad, 0.0, at, detail);
}

static pair up_half_poison(tcase *tc, size_t n)
{
    uint16_t *v = host(tc, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        v[i] = POISON_U16;
    return up(tc, v, n * sizeof(uint16_t));
}

/* The fused half tails at a small shape and at a feed-forward chunk's width, bf16 (arg 0) and
 * fp16 (arg 1), with and without a bias: the rounded gelu within one half step, its input
 * untouched; the rounding op's x + bias bit for bit (an fp32 add). {N, C, shift}: the CUDA
 * backend takes 4 elements a thread where C % 4 == 0 and every pointer is aligned to 4
 * elements, else one; a shift of one element (every buffer one longer, each pointer one
 * further, bias included) sends a width of 3072 down the one-element path too. */
static const int fused_shapes[][3] = {{37, 83, 0}, {67, 3072, 0}, {67, 3072, 1}};
#define FUSED_SHAPES (int)(sizeof fused_shapes / sizeof fused_shapes[0])
#define PH(x) ((uint16_t *)(x).p[side_])

static void t_bias_gelu_half(tcase *tc, int arg)
{
    for (int i = 0; i < FUSED_SHAPES; i++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int N = fused_shapes[i][0], C = fused_shapes[i][1], sh = fused_shapes[i][2];
            size_t n = (size_t)N * C + sh;
            pair x = up_rand(tc, n, -6, 6), out = up_half_poison(tc, n), bias = {{NULL, NULL}};
            if (with_bias)
                bias = up_rand(tc, (size_t)C + sh, -1, 1);
            ON_BOTH(tc, be->bias_gelu_half_forward(PH(out) + sh, PF(x) + sh,
                                                   with_bias ? PF(bias) + sh : NULL, N, C, arg));
            if (!settle(tc, "bias_gelu_half_forward"))
                return;
            check_exact(tc, label(tc, "x unchanged[N=%d,C=%d,shift=%d,bias=%d]", N, C, sh,
                                  with_bias),
                        x, n, sizeof(float));
            check_half_steps(tc, label(tc, "out16[N=%d,C=%d,shift=%d,bias=%d]", N, C, sh,
                                       with_bias),
                             out, n, 1);
        }
}

/* variant 0: bias and x16, 1: no bias, 2: no x16; everything bit for bit */
static void t_bias_half_round(tcase *tc, int arg)
{
    for (int i = 0; i < FUSED_SHAPES; i++)
        for (int variant = 0; variant < 3; variant++) {
            int N = fused_shapes[i][0], C = fused_shapes[i][1], sh = fused_shapes[i][2];
            size_t n = (size_t)N * C + sh;
            pair x = up_rand(tc, n, -3, 3), x16 = {{NULL, NULL}}, bias = {{NULL, NULL}};
            if (variant != 1)
                bias = up_rand(tc, (size_t)C + sh, -1, 1);
            if (variant != 2)
                x16 = up_half_poison(tc, n);
            ON_BOTH(tc, be->bias_half_round_forward(PF(x) + sh, variant != 2 ? PH(x16) + sh : NULL,
                                                    variant != 1 ? PF(bias) + sh : NULL, N, C,
                                                    arg));
            if (!settle(tc, "bias_half_round_forward"))
                return;
            check_exact(tc, label(tc, "x[N=%d,C=%d,shift=%d,variant=%d]", N, C, sh, variant), x,
                        n, sizeof(float));
            if (variant != 2)
                check_exact(tc, label(tc, "x16[N=%d,C=%d,shift=%d,variant=%d]", N, C, sh, variant),
                            x16, n, sizeof(uint16_t));
        }
}

typedef struct {
    int B, H, Tq, Tk;
    size_t n;
} softmax_shape;

static softmax_shape softmax_of(int big)
{
    softmax_shape s = big ? (softmax_shape){2, 4, 130, 130, 0} : (softmax_shape){3, 3, 19, 23, 0};
    s.n = (size_t)s.B * s.H * s.Tq * s.Tk;
    return s;
}

/* With and without a mask (soft biases and -FLT_MAX padding), into its own buffer and in place
 * (out aliasing inp, as attention uses it). */
static void t_softmax_forward(tcase *tc, int big)
{
    softmax_shape s = softmax_of(big);
    const float *x = host_rand(tc, s.n, -4, 4);
    pair mask = up(tc, host_key_mask(tc, s.B, s.Tk, 1), sizeof(float) * s.B * s.Tk);
    for (int v = 0; v < 4; v++) {
        int masked = v & 1, alias = v >> 1;
        pair inp = up(tc, x, s.n * sizeof(float)), out = alias ? inp : up_poison(tc, s.n);
        pair m = masked ? mask : NONE;
        ON_BOTH(tc, be->softmax_forward(P(out), P(inp), P(m), 0.3f, s.B, s.H, s.Tq, s.Tk));
        if (!settle(tc, "softmax_forward"))
            return;
        check_f32(tc, label(tc, "out[mask=%d,inplace=%d]", masked, alias), out, s.n, TOL_F32);
    }
}

static void t_softmax_backward(tcase *tc, int big)
{
    softmax_shape s = softmax_of(big);
    pair inp = up_rand(tc, s.n, -4, 4), out = up_poison(tc, s.n);
    pair mask = up(tc, host_key_mask(tc, s.B, s.Tk, 1), sizeof(float) * s.B * s.Tk);
    tc->bk[REF]->softmax_forward(out.p[REF], inp.p[REF], mask.p[REF], 0.3f, s.B, s.H, s.Tq, s.Tk);
    out = shared(tc, out, s.n * sizeof(float));
    pair dout = up_rand(tc, s.n, -1, 1), dinp = up_grad(tc, s.n);
    ON_BOTH(tc, be->softmax_backward(P(dinp), P(dout), P(out), 0.3f, s.B, s.H, s.Tq, s.Tk));
    if (!settle(tc, "softmax_backward"))
        return;
    check_f32(tc, "dinp", dinp, s.n, TOL_F32);
}

/* ------------------------------------------------------------------------------------------
 * attention */

typedef struct {
    int B, T, NH, HS;
    size_t nqkv, nout, nprobs;
} attention_shape;

/* a shape with its tensors' element counts filled in */
static attention_shape attention_sized(attention_shape a)
{
    a.nout = (size_t)a.B * a.T * a.NH * a.HS;
    a.nqkv = 3 * a.nout;
    a.nprobs = (size_t)a.B * a.NH * a.T * a.T;
    return a;
}

/* 0 small, 1 big, 2 the backward's head groups (see t_attention_backward) */
static attention_shape attention_of(int which)
{
    static const attention_shape shapes[] = {
        {3, 19, 3, 21, 0, 0, 0}, {2, 130, 4, 64, 0, 0, 0}, {12, 150, 7, 20, 0, 0, 0}};
    return attention_sized(shapes[which]);
}

static void t_attention_forward(tcase *tc, int big)
{
    attention_shape a = attention_of(big);
    pair qkv = up_rand(tc, a.nqkv, -2, 2);
    pair mask = up(tc, host_key_mask(tc, a.B, a.T, 0), sizeof(float) * a.B * a.T);
    for (int masked = 0; masked < 2; masked++) {
        pair m = masked ? mask : NONE;
        pair out = up_poison(tc, a.nout), probs = up_poison(tc, a.nprobs);
        ON_BOTH(tc, be->attention_forward(P(out), P(probs), P(qkv), P(m), a.B, a.T, a.NH, a.HS));
        if (!settle(tc, "attention_forward"))
            return;
        check_f32(tc, label(tc, "out[mask=%d]", masked), out, a.nout, TOL_F32);
        check_f32(tc, label(tc, "probs[mask=%d]", masked), probs, a.nprobs, TOL_F32);
    }
}

/* attention_half_forward (arg: big * 2 + type) on half-valued Q|K|V, with and without a mask.
 * The probabilities of the two sides may round apart where fp32's softmax sums differ, so
 * instead of a relative tolerance: every tested probability is a half value within one ulp of
 * the reference's (one rounding step apart at most; f16: or its subnormal step), and the tested out is its own
 * probabilities times V (in double here, 1e-5 of the row's magnitude: a product over the
 * unrounded probabilities misses by up to half an ulp of each); then out against the
 * reference's within the half type's ulp. */
static void t_attention_half_forward(tcase *tc, int arg)
{
    int type = arg % 2;
    attention_shape a = attention_of(arg / 2);
    const int C = a.NH * a.HS, C3 = 3 * C;
    float *hq = host_rand(tc, a.nqkv, -2, 2);
    for (size_t i = 0; i < a.nqkv; i++)
        hq[i] = sherl_half_round_f32(hq[i], type);
    pair qkv = up(tc, hq, a.nqkv * sizeof(float));
    float *hmask = host_key_mask(tc, a.B, a.T, 0);
    pair mask = up(tc, hmask, sizeof(float) * a.B * a.T);
    const double ulp = type == SHERL_HALF_F16 ? 0x1p-10 : 0x1p-7;
    const double floor = type == SHERL_HALF_F16 ? 0x1p-24 : 0.0;
    for (int masked = 0; masked < 2; masked++) {
        pair m = masked ? mask : NONE;
        pair out = up_poison(tc, a.nout), probs = up_poison(tc, a.nprobs);
        ON_BOTH(tc, be->attention_half_forward(P(out), P(probs), P(qkv), P(m), a.B, a.T, a.NH,
                                               a.HS, type));
        if (!settle(tc, "attention_half_forward"))
            return;
        const float *pw = fetch(tc, probs, REF, a.nprobs * sizeof(float));
        const float *pg = fetch(tc, probs, GOT, a.nprobs * sizeof(float));
        const float *og = fetch(tc, out, GOT, a.nout * sizeof(float));
        if (!settle(tc, "copy_to_host"))
            return;
        size_t not_half = 0, at_h = 0, at_p = 0, at_o = 0;
        double worst_p = 0.0, worst_o = 0.0;
        for (size_t i = 0; i < a.nprobs; i++) {
            if (!(sherl_half_round_f32(pg[i], type) == pg[i]) && not_half++ == 0)
                at_h = i;
            double e = fabs((double)pg[i] - pw[i]) / (ulp * fabs(pw[i]) + floor + 1e-30);
            if (!(e <= worst_p))
                worst_p = e, at_p = i;
        }
        for (size_t bh = 0; bh < (size_t)a.B * a.NH; bh++) {
            size_t b = bh / a.NH, h = bh % a.NH;
            for (int i = 0; i < a.T; i++)
                for (int e = 0; e < a.HS; e++) {
                    const float *pr = pg + (bh * a.T + i) * a.T;
                    double o = 0.0, mag = 0.0;
                    for (int j = 0; j < a.T; j++) {
                        double v = hq[(b * a.T + j) * C3 + 2 * C + h * a.HS + e];
                        o += pr[j] * v;
                        mag += fabs(pr[j] * v);
                    }
                    size_t k = (b * a.T + i) * C + h * a.HS + e;
                    double err = fabs(og[k] - o) / (mag + 1e-30);
                    if (!(err <= worst_o))
                        worst_o = err, at_o = k;
                }
        }
        char detail[96];
        snprintf(detail, sizeof detail, "got %.9g", pg[at_h]);
        verdict(tc, label(tc, "probs not %s values[mask=%d]", type ? "f16" : "bf16", masked),
                (double)not_half, 0.0, at_h, detail);
        snprintf(detail, sizeof detail, "got %.9g want %.9g", pg[at_p], pw[at_p]);
        verdict(tc, label(tc, "probs in ulps of the reference's[mask=%d]", masked), worst_p, 1.0,
                at_p, detail);
        snprintf(detail, sizeof detail, "got %.9g", og[at_o]);
        verdict(tc, label(tc, "out against its own probs . v[mask=%d]", masked), worst_o, 1e-5,
                at_o, detail);
        check_f32(tc, label(tc, "out[mask=%d]", masked), out, a.nout, ulp);
    }
}

/* attention_half_forward without probabilities (probs NULL: a device's fused kernel), arg =
 * shape * 2 + type, with and without a mask: the reference gives the same bits with and
 * without probabilities, and the tested is within the half type's ulp of it (as
 * t_attention_half_forward's out). The shapes end their query strips and key stages part way
 * (T 19, 130, 70, 5, 33, 17), take heads that are not a multiple of 16 (21, 48, 20), heads
 * whose output takes two groups of column tiles (160), and the widest allowed; on a device
 * that keeps the score strips, T 256 (two stages of 128 keys), 130 at the widest head (two
 * groups of column tiles over three stages of 64 keys, three idle warps in the last block), and
 * BERT's longest, 512, which keeps too few strips an SM and takes the three-pass kernel. */
static void t_attention_half_fused(tcase *tc, int arg)
{
    static const attention_shape shapes[] = {
        {3, 19, 3, 21, 0, 0, 0}, {2, 130, 4, 64, 0, 0, 0}, {2, 70, 3, 48, 0, 0, 0},
        {4, 5, 2, 16, 0, 0, 0},  {2, 33, 2, 160, 0, 0, 0}, {1, 17, 1, SHERL_ATTN_FUSED_MAX_HS, 0, 0, 0},
        {5, 40, 7, 20, 0, 0, 0}, {1, 512, 2, 64, 0, 0, 0}, {2, 256, 2, 64, 0, 0, 0},
        {1, 130, 1, SHERL_ATTN_FUSED_MAX_HS, 0, 0, 0}};
    int type = arg % 2;
    attention_shape a = attention_sized(shapes[arg / 2]);
    float *hq = host_rand(tc, a.nqkv, -2, 2);
    for (size_t i = 0; i < a.nqkv; i++)
        hq[i] = sherl_half_round_f32(hq[i], type);
    pair qkv = up(tc, hq, a.nqkv * sizeof(float));
    pair mask = up(tc, host_key_mask(tc, a.B, a.T, 0), sizeof(float) * a.B * a.T);
    const double ulp = type == SHERL_HALF_F16 ? 0x1p-10 : 0x1p-7;
    for (int masked = 0; masked < 2; masked++) {
        pair m = masked ? mask : NONE;
        pair with = up_poison(tc, a.nout), out = up_poison(tc, a.nout);
        pair probs = up_poison(tc, a.nprobs);
        ON_BOTH(tc, be->attention_half_forward(P(with), P(probs), P(qkv), P(m), a.B, a.T, a.NH,
                                               a.HS, type));
        ON_BOTH(tc, be->attention_half_forward(P(out), NULL, P(qkv), P(m), a.B, a.T, a.NH, a.HS,
                                               type));
        if (!settle(tc, "attention_half_forward"))
            return;
        const float *rw = fetch(tc, with, REF, a.nout * sizeof(float));
        const float *ro = fetch(tc, out, REF, a.nout * sizeof(float));
        if (!settle(tc, "copy_to_host"))
            return;
        size_t differ = 0, at = 0;
        for (size_t i = 0; i < a.nout; i++)
            if (memcmp(&rw[i], &ro[i], sizeof(float)) && differ++ == 0)
                at = i;
        char detail[96];
        snprintf(detail, sizeof detail, "with %.9g without %.9g", rw[at], ro[at]);
        verdict(tc, label(tc, "reference's out without probs differs[mask=%d]", masked),
                (double)differ, 0.0, at, detail);
        check_f32(tc, label(tc, "out[mask=%d]", masked), out, a.nout, ulp);
    }
}

/* Halves of `type` compared as values, widened: the worst |got - ref| / (steps ulp |ref| +
 * floor max |ref|) against tol, a NaN anywhere an infinite error. steps 0, floor 1: the error
 * relative to the tensor's largest magnitude; steps 1, floor small: within a rounding step of
 * each element, plus what fp32 sums in another order leave near zero (more than a step). */
static void check_halves(tcase *tc, const char *tensor, pair x, size_t n, int type, double steps,
                         double floor, double tol)
{
    const uint16_t *want = fetch(tc, x, REF, n * sizeof(uint16_t));
    const uint16_t *got = fetch(tc, x, GOT, n * sizeof(uint16_t));
    if (!settle(tc, "copy_to_host"))
        return;
    const int f16 = type == SHERL_HALF_F16;
    const double ulp = f16 ? 0x1p-10 : 0x1p-7;
    double worst = 0.0, scale = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double w = f16 ? sherl_f16_to_f32(want[i]) : sherl_bf16_to_f32(want[i]);
        if (fabs(w) > scale)
            scale = fabs(w);
    }
    for (size_t i = 0; i < n; i++) {
        double w = f16 ? sherl_f16_to_f32(want[i]) : sherl_bf16_to_f32(want[i]);
        double g = f16 ? sherl_f16_to_f32(got[i]) : sherl_bf16_to_f32(got[i]);
        double e = fabs(g - w) / (steps * ulp * fabs(w) + floor * scale + 1e-30);
        if (!(e <= worst))
            worst = isnan(e) ? INFINITY : e, at = i;
    }
    char detail[96];
    snprintf(detail, sizeof detail, "got 0x%04x want 0x%04x", n ? got[at] : 0, n ? want[at] : 0);
    verdict(tc, tensor, worst, tol, at, detail);
}

/* attention_half16_forward (arg: shape * 2 + type, t_attention_half_fused's shapes) on the
 * halves of a random Q|K|V, with and without a mask: the reference's out16 is its
 * attention_half_forward without probabilities rounded, bit for bit, and the tested within
 * the half type's ulp of it. */
static void t_attention_half16(tcase *tc, int arg)
{
    static const attention_shape shapes[] = {
        {3, 19, 3, 21, 0, 0, 0}, {2, 130, 4, 64, 0, 0, 0}, {2, 33, 2, 160, 0, 0, 0}};
    int type = arg % 2;
    attention_shape a = attention_sized(shapes[arg / 2]);
    float *hq = host_rand(tc, a.nqkv, -2, 2);
    uint16_t *h16 = host(tc, a.nqkv * sizeof(uint16_t));
    for (size_t i = 0; i < a.nqkv; i++) {
        hq[i] = sherl_half_round_f32(hq[i], type);
        h16[i] = type == SHERL_HALF_F16 ? sherl_f32_to_f16(hq[i]) : sherl_f32_to_bf16(hq[i]);
    }
    pair qkv = up(tc, hq, a.nqkv * sizeof(float)), qkv16 = up(tc, h16, a.nqkv * sizeof(uint16_t));
    pair mask = up(tc, host_key_mask(tc, a.B, a.T, 0), sizeof(float) * a.B * a.T);
    const double ulp = type == SHERL_HALF_F16 ? 0x1p-10 : 0x1p-7;
    for (int masked = 0; masked < 2; masked++) {
        pair m = masked ? mask : NONE;
        pair wide = up_poison(tc, a.nout), out16 = up_half_poison(tc, a.nout);
        ON_BOTH(tc, be->attention_half_forward(P(wide), NULL, P(qkv), P(m), a.B, a.T, a.NH, a.HS,
                                               type));
        ON_BOTH(tc, be->attention_half16_forward(PH(out16), PH(qkv16), P(m), a.B, a.T, a.NH,
                                                 a.HS, type));
        if (!settle(tc, "attention_half16_forward"))
            return;
        const float *rw = fetch(tc, wide, REF, a.nout * sizeof(float));
        const uint16_t *r16 = fetch(tc, out16, REF, a.nout * sizeof(uint16_t));
        if (!settle(tc, "copy_to_host"))
            return;
        size_t differ = 0, at = 0;
        for (size_t i = 0; i < a.nout; i++) {
            uint16_t want = type == SHERL_HALF_F16 ? sherl_f32_to_f16(rw[i]) : sherl_f32_to_bf16(rw[i]);
            if (r16[i] != want && differ++ == 0)
                at = i;
        }
        verdict(tc, label(tc, "reference's out16 not its rounded out[mask=%d]", masked),
                (double)differ, 0.0, at, "");
        check_halves(tc, label(tc, "out16[mask=%d]", masked), out16, a.nout, type, 0.0, 1.0, ulp);
    }
}

/* linear_half16_forward, bf16 (arg 0) and fp16 (arg 1), with and without a bias, at
 * {N, C, OC, shift}: the reference's out16 is gemm_*16 into fp32 then bias_half_round's x16,
 * bit for bit (it is defined so), and the tested within a rounding step of it (check_halves); a shift of
 * one element makes every pointer 2-byte aligned only (a device's fused product must then
 * pick an algorithm for that, or run the product and the tail apart). */
static void t_linear_half16(tcase *tc, int type)
{
    /* {16, 3072, 64}: few outputs over a long sum, where a device's library likes to split
     * the sum (its partial sums must stay fp32); its outputs near zero take the floor of 1e-4
     * of the largest (cuda_emu's sequential fp32 sum is 0.73 of that off BLIS's) */
    static const int shapes[][4] = {
        {37, 83, 67, 0}, {130, 256, 384, 0}, {19, 64, 96, 1}, {16, 3072, 64, 0}};
    for (int i = 0; i < 4; i++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int N = shapes[i][0], C = shapes[i][1], OC = shapes[i][2], sh = shapes[i][3];
            size_t no = (size_t)N * OC;
            pair inp = up_half(tc, (size_t)N * C + sh, type == SHERL_HALF_F16);
            pair w = up_half(tc, (size_t)OC * C + sh, type == SHERL_HALF_F16);
            pair bias = with_bias ? up_rand(tc, (size_t)OC + sh, -1, 1) : NONE;
            pair tmp = up_poison(tc, no + sh), out16 = up_half_poison(tc, no + sh);
            pair wide = up_poison(tc, no), want16 = up_half_poison(tc, no);
            ON_BOTH(tc, be->linear_half16_forward(PH(out16) + sh, PF(tmp) + sh, PH(inp) + sh,
                                                  PH(w) + sh, with_bias ? PF(bias) + sh : NULL,
                                                  N, C, OC, type));
            if (!settle(tc, "linear_half16_forward"))
                return;
            /* the definition, on the reference alone */
            const sherl_backend *ref = tc->bk[REF];
            (type == SHERL_HALF_F16 ? ref->gemm_f16 : ref->gemm_bf16)(
                0, 1, N, OC, C, 1.0f, (uint16_t *)inp.p[REF] + sh, C, (uint16_t *)w.p[REF] + sh,
                C, 0.0f, wide.p[REF], OC);
            ref->bias_half_round_forward(wide.p[REF], want16.p[REF],
                                         with_bias ? (float *)bias.p[REF] + sh : NULL, N, OC,
                                         type);
            const uint16_t *r16 = fetch(tc, out16, REF, (no + sh) * sizeof(uint16_t));
            const uint16_t *d16 = fetch(tc, want16, REF, no * sizeof(uint16_t));
            if (!settle(tc, "copy_to_host"))
                return;
            size_t differ = 0, at = 0;
            for (size_t k = 0; k < no; k++)
                if (r16[sh + k] != d16[k] && differ++ == 0)
                    at = k;
            verdict(tc, label(tc, "reference's out16 not its definition's[N=%d,bias=%d]", N,
                              with_bias),
                    (double)differ, 0.0, at, "");
            pair got = {{(uint16_t *)out16.p[REF] + sh, (uint16_t *)out16.p[GOT] + sh}};
            check_halves(tc, label(tc, "out16[N=%d,C=%d,OC=%d,shift=%d,bias=%d]", N, C, OC, sh,
                                   with_bias),
                         got, no, type, 1.0, 1e-4, 1.0);
        }
}

/* The scratch a backend reserves for the calling thread: prepare(NULL) gives it back, then
 * with `shape` a step of the test's T, NH, HS over `B` sequences is prepared. */
static void prepare_scratch(tcase *tc, const attention_shape *shape, int B)
{
    sherl_scratch_shape q = {.B = B, .T = shape ? shape->T : 0, .NH = shape ? shape->NH : 0,
                             .HS = shape ? shape->HS : 0, .threads = 1};
    for (int s = 0; s < 2; s++)
        if (tc->bk[s]->prepare(NULL) != 0 || (shape && tc->bk[s]->prepare(&q) != 0))
            fail(tc, "%s: prepare failed", tc->bk[s]->name);
}

/* probs from the reference forward (masked: rows with exact zeros), the same on both sides.
 * The CUDA backward takes its heads in groups whose dP fits in the thread's prepared scratch
 * (at least one head's worth), so each variant fixes the scratch first:
 *   small: none prepared, one head per group (3 groups);
 *   big: its own shape prepared, all heads in one group;
 *   groups: one sequence prepared (the backend's 4 MiB floor) while the call's dP of all heads
 *   needs 8.6 MB: 3 heads a group, groups of 3, 3 and 1. */
static void t_attention_backward(tcase *tc, int which)
{
    attention_shape a = attention_of(which);
    prepare_scratch(tc, which == 0 ? NULL : &a, which == 2 ? 1 : a.B);
    if (!settle(tc, "prepare"))
        return;
    pair qkv = up_rand(tc, a.nqkv, -2, 2), dout = up_rand(tc, a.nout, -1, 1);
    pair mask = up(tc, host_key_mask(tc, a.B, a.T, 0), sizeof(float) * a.B * a.T);
    for (int masked = 0; masked < 2; masked++) {
        pair out = up_poison(tc, a.nout), probs = up_poison(tc, a.nprobs);
        tc->bk[REF]->attention_forward(out.p[REF], probs.p[REF], qkv.p[REF],
                                       masked ? mask.p[REF] : NULL, a.B, a.T, a.NH, a.HS);
        probs = shared(tc, probs, a.nprobs * sizeof(float));
        pair dqkv = up_grad(tc, a.nqkv);
        ON_BOTH(tc, be->attention_backward(P(dqkv), P(dout), P(qkv), P(probs), a.B, a.T, a.NH,
                                           a.HS));
        if (!settle(tc, "attention_backward"))
            return;
        check_f32(tc, label(tc, "dqkv[mask=%d]", masked), dqkv, a.nqkv, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * embedding, residual, dropout */

typedef struct {
    int V, N, C;
} embedding_shape;

static embedding_shape embedding_of(int big)
{
    return big ? (embedding_shape){1000, 260, 385} : (embedding_shape){50, 37, 83};
}

/* Ids from a quarter of the table, so most repeat (the backward's scatter must add, not race);
 * the first and last rows are among them. */
static pair up_ids(tcase *tc, embedding_shape e)
{
    int32_t *ids = host(tc, sizeof(int32_t) * e.N);
    for (int n = 0; n < e.N; n++)
        ids[n] = below(tc, e.V / 4 + 1);
    ids[0] = e.V - 1;
    ids[1] = 0;
    ids[e.N - 1] = ids[2];
    return up(tc, ids, sizeof(int32_t) * e.N);
}

static void t_embedding_forward(tcase *tc, int big)
{
    embedding_shape e = embedding_of(big);
    pair ids = up_ids(tc, e), table = up_rand(tc, (size_t)e.V * e.C, -1, 1);
    pair out = up_poison(tc, (size_t)e.N * e.C);
    ON_BOTH(tc, be->embedding_forward(P(out), P(ids), P(table), e.N, e.C));
    if (!settle(tc, "embedding_forward"))
        return;
    check_exact(tc, "out", out, (size_t)e.N * e.C, sizeof(float)); /* a gather: exact */
}

/* A half table (a bf16 or fp16 backbone's embeddings) widened on the gather: exact.
 * arg: bit 0 big, bit 1 fp16. */
static void t_embedding_forward_half(tcase *tc, int arg)
{
    int f16 = (arg >> 1) & 1;
    embedding_shape e = embedding_of(arg & 1);
    pair ids = up_ids(tc, e), table = up_half(tc, (size_t)e.V * e.C, f16);
    pair out = up_poison(tc, (size_t)e.N * e.C);
    if (f16) {
        ON_BOTH(tc, be->embedding_forward_f16(P(out), P(ids), P(table), e.N, e.C));
    } else {
        ON_BOTH(tc, be->embedding_forward_bf16(P(out), P(ids), P(table), e.N, e.C));
    }
    if (!settle(tc, f16 ? "embedding_forward_f16" : "embedding_forward_bf16"))
        return;
    check_exact(tc, "out", out, (size_t)e.N * e.C, sizeof(float));
}

static void t_embedding_backward(tcase *tc, int big)
{
    embedding_shape e = embedding_of(big);
    pair ids = up_ids(tc, e), dout = up_rand(tc, (size_t)e.N * e.C, -1, 1);
    pair dtable = up_grad(tc, (size_t)e.V * e.C);
    ON_BOTH(tc, be->embedding_backward(P(dtable), P(dout), P(ids), e.N, e.C));
    if (!settle(tc, "embedding_backward"))
        return;
    check_f32(tc, "dtable", dtable, (size_t)e.V * e.C, TOL_F32);
}

/* out separate, out aliasing a, out aliasing b (the engine adds in place). */
static void t_residual_forward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        const float *ha = host_rand(tc, n, -1, 1), *hb = host_rand(tc, n, -1, 1);
        for (int v = 0; v < 3; v++) {
            pair a = up(tc, ha, n * sizeof(float)), b = up(tc, hb, n * sizeof(float));
            pair out = v == 0 ? up_poison(tc, n) : v == 1 ? a : b;
            ON_BOTH(tc, be->residual_forward(P(out), P(a), P(b), n));
            if (!settle(tc, "residual_forward"))
                return;
            check_f32(tc, label(tc, "out[n=%zu,alias=%d]", n, v), out, n, TOL_F32);
        }
    }
}

static void t_residual_backward(tcase *tc, int arg)
{
    static const int wants[] = {3, 2, 1}; /* bits: 1 da, 2 db */
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair dout = up_rand(tc, n, -1, 1);
        for (int v = 0; v < 3; v++) {
            pair da = wants[v] & 1 ? up_grad(tc, n) : NONE;
            pair db = wants[v] & 2 ? up_grad(tc, n) : NONE;
            ON_BOTH(tc, be->residual_backward(P(da), P(db), P(dout), n));
            if (!settle(tc, "residual_backward"))
                return;
            check_f32(tc, label(tc, "da[n=%zu,want=%d]", n, wants[v]), da, n, TOL_F32);
            check_f32(tc, label(tc, "db[n=%zu,want=%d]", n, wants[v]), db, n, TOL_F32);
        }
    }
}

/* Counters cross 2^32 (offset + i), so a kernel that indexes with 32 bits draws other masks. */
static const uint64_t dropout_seed = 0x5eed5eed1234abcdull;
static const uint64_t dropout_offset = (1ull << 32) - 5000;
static const float dropout_ps[] = {0.0f, 0.1f, 0.5f};

/* Inputs are never zero, so a zero output means dropped; the dropped sets must be identical.
 * In place too (out aliasing inp). */
static void t_dropout_forward(tcase *tc, int arg)
{
    const size_t n = NBIG;
    const float *x = host_nonzero(tc, n, 1.0f);
    for (int i = 0; i < 3; i++) {
        float p = dropout_ps[i];
        for (int inplace = 0; inplace < 2; inplace++) {
            pair inp = up(tc, x, n * sizeof(float)), out = inplace ? inp : up_poison(tc, n);
            ON_BOTH(tc, be->dropout_forward(P(out), P(inp), n, p, dropout_seed, dropout_offset));
            if (!settle(tc, "dropout_forward"))
                return;
            check_mask(tc, label(tc, "mask[p=%g,inplace=%d]", p, inplace), out, NULL, n);
            check_f32(tc, label(tc, "out[p=%g,inplace=%d]", p, inplace), out, n, TOL_F32);
        }
    }
}

/* dout never zero: a dropped element is one whose gradient kept its initial value. */
static void t_dropout_backward(tcase *tc, int arg)
{
    const size_t n = NBIG;
    pair dout = up(tc, host_nonzero(tc, n, 1.0f), n * sizeof(float));
    for (int i = 0; i < 3; i++) {
        float p = dropout_ps[i];
        const float *g0 = host_nonzero(tc, n, GRAD0);
        pair dinp = up(tc, g0, n * sizeof(float));
        ON_BOTH(tc, be->dropout_backward(P(dinp), P(dout), n, p, dropout_seed, dropout_offset));
        if (!settle(tc, "dropout_backward"))
            return;
        check_mask(tc, label(tc, "mask[p=%g]", p), dinp, g0, n);
        check_f32(tc, label(tc, "dinp[p=%g]", p), dinp, n, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * pooling, normalisation, ReLU */

typedef struct {
    int B, T, C;
} pool_shape;

static pool_shape pool_of(int big)
{
    return big ? (pool_shape){8, 130, 385} : (pool_shape){3, 19, 83};
}

static void t_mean_pool_forward(tcase *tc, int big)
{
    pool_shape s = pool_of(big);
    pair inp = up_rand(tc, (size_t)s.B * s.T * s.C, -1, 1), out = up_poison(tc, (size_t)s.B * s.C);
    pair mask = up(tc, host_token_mask(tc, s.B, s.T), sizeof(int32_t) * s.B * s.T);
    ON_BOTH(tc, be->mean_pool_forward(P(out), P(inp), P(mask), s.B, s.T, s.C));
    if (!settle(tc, "mean_pool_forward"))
        return;
    check_f32(tc, "out", out, (size_t)s.B * s.C, TOL_F32);
}

static void t_mean_pool_backward(tcase *tc, int big)
{
    pool_shape s = pool_of(big);
    pair dout = up_rand(tc, (size_t)s.B * s.C, -1, 1), dinp = up_grad(tc, (size_t)s.B * s.T * s.C);
    pair mask = up(tc, host_token_mask(tc, s.B, s.T), sizeof(int32_t) * s.B * s.T);
    ON_BOTH(tc, be->mean_pool_backward(P(dinp), P(dout), P(mask), s.B, s.T, s.C));
    if (!settle(tc, "mean_pool_backward"))
        return;
    check_f32(tc, "dinp", dinp, (size_t)s.B * s.T * s.C, TOL_F32);
}

/* Rows for l2norm. With eps = 1e-12 (torch's default) every norm is far above it; the eps
 * case has a zero row and a tiny row below eps = 0.5, the clamped branch. eps is kept near the
 * rows' scale there so that branch's dy/eps does not dwarf the other rows in the error measure. */
static const float l2_epss[] = {1e-12f, 0.5f};

static float *host_l2_rows(tcase *tc, int N, int C, float eps)
{
    float *x = host_rand(tc, (size_t)N * C, -1, 1);
    if (eps >= 0.1f) {
        memset(x + 3 * (size_t)C, 0, sizeof(float) * C);
        for (int c = 0; c < C; c++)
            x[5 * (size_t)C + c] *= 0.01f;
    }
    return x;
}

static void t_l2norm_forward(tcase *tc, int arg)
{
    const int N = 37, C = 83;
    for (int e = 0; e < 2; e++) {
        pair inp = up(tc, host_l2_rows(tc, N, C, l2_epss[e]), sizeof(float) * N * C);
        pair out = up_poison(tc, (size_t)N * C);
        ON_BOTH(tc, be->l2norm_forward(P(out), P(inp), N, C, l2_epss[e]));
        if (!settle(tc, "l2norm_forward"))
            return;
        check_f32(tc, label(tc, "out[eps=%g]", l2_epss[e]), out, (size_t)N * C, TOL_F32);
    }
}

static void t_l2norm_backward(tcase *tc, int arg)
{
    const int N = 37, C = 83;
    for (int e = 0; e < 2; e++) {
        pair inp = up(tc, host_l2_rows(tc, N, C, l2_epss[e]), sizeof(float) * N * C);
        pair dout = up_rand(tc, (size_t)N * C, -1, 1), dinp = up_grad(tc, (size_t)N * C);
        ON_BOTH(tc, be->l2norm_backward(P(dinp), P(dout), P(inp), N, C, l2_epss[e]));
        if (!settle(tc, "l2norm_backward"))
            return;
        check_f32(tc, label(tc, "dinp[eps=%g]", l2_epss[e]), dinp, (size_t)N * C, TOL_F32);
    }
}

/* The edges kernels.h's CPU comments promise: relu(+-0) is a zero, relu(NaN) is NaN (as
 * torch.relu); relu'(0) = 0, and an infinite dout on a dead unit adds nothing (a select, not a
 * product). */
static void t_relu_forward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        float *x = host_rand(tc, n, -1, 1);
        x[0] = 0.0f;
        x[1] = -0.0f;
        x[2] = NAN;
        pair inp = up(tc, x, n * sizeof(float)), out = up_poison(tc, n);
        ON_BOTH(tc, be->relu_forward(P(out), P(inp), n));
        if (!settle(tc, "relu_forward"))
            return;
        compare_f32(tc, label(tc, "out[n=%zu]", n), out, n, TOL_F32, 1);
    }
}

static void t_relu_backward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        float *x = host_rand(tc, n, -1, 1), *dy = host_rand(tc, n, -1, 1);
        x[0] = 0.0f;
        dy[0] = -INFINITY;
        x[3] = -0.5f;
        dy[3] = INFINITY;
        pair inp = up(tc, x, n * sizeof(float)), dout = up(tc, dy, n * sizeof(float));
        pair dinp = up_grad(tc, n);
        ON_BOTH(tc, be->relu_backward(P(dinp), P(inp), P(dout), n));
        if (!settle(tc, "relu_backward"))
            return;
        check_f32(tc, label(tc, "dinp[n=%zu]", n), dinp, n, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * SHERL guidance: K taps of N tokens, side width d */

enum { MTSA_N = 37, MTSA_D = 45, MTSA_BIG = 100, MTSA_BIG_N = 300, MTSA_BIG_D = 96 };

/* arg: K taps at N = 37, d = 45; MTSA_BIG + K: the engine's side width and enough tokens that
 * the CUDA backward sums its per-token partial gradients in several blocks, the last partial */
static void mtsa_shape(int arg, int *K, int *N, int *d)
{
    int big = arg >= MTSA_BIG;
    *K = big ? arg - MTSA_BIG : arg;
    *N = big ? MTSA_BIG_N : MTSA_N;
    *d = big ? MTSA_BIG_D : MTSA_D;
}

/* Taps x[K,N,d] with the branches the op has: token 1's shallow taps are all parallel (cosines
 * 1), token 2's first two are opposite (cosine -1, cut by the relu). With `tiny`, token 0's first
 * shallow tap is scaled by 1e-3: its gradient grows as 1/||x|| and dominates dx, so that case is
 * a variant of its own rather than part of every check. Never an all-zero tap: its rho is 0
 * (xh = 0, so even cos(j,j) is 0) and the CPU turns the token, and with it all of dw and dc,
 * into NaN. */
static float *host_taps(tcase *tc, int K, int N, int d, int tiny)
{
    const size_t tap = (size_t)N * d;
    float *x = host_rand(tc, (size_t)K * tap, -1, 1);
    for (int e = 0; e < d; e++) {
        if (tiny)
            x[e] *= 1e-3f;
        for (int j = 1; j < K - 1; j++)
            x[j * tap + d + e] = (float)(j + 1) * x[d + e];
        if (K - 1 >= 2)
            x[tap + 2 * d + e] = -x[2 * d + e];
    }
    return x;
}

static void t_mtsa_forward(tcase *tc, int arg)
{
    int K, N, d;
    mtsa_shape(arg, &K, &N, &d);
    const int S = K - 1;
    const float c0 = 0.05f;
    pair w = up_rand(tc, d, -1, 1), c = up(tc, &c0, sizeof c0);
    for (int tiny = 0; tiny < 2; tiny++) {
        pair x = up(tc, host_taps(tc, K, N, d, tiny), sizeof(float) * K * N * d);
        pair z = up_poison(tc, (size_t)N * d), sv = up_poison(tc, (size_t)N * S);
        pair rho = up_poison(tc, (size_t)N * S), alpha = up_poison(tc, (size_t)N * S);
        ON_BOTH(tc, be->mtsa_guide_forward(P(z), P(sv), P(rho), P(alpha), P(x), P(w), P(c), K, N,
                                           d));
        if (!settle(tc, "mtsa_guide_forward"))
            return;
        check_f32(tc, label(tc, "z[tiny=%d]", tiny), z, (size_t)N * d, TOL_F32);
        check_f32(tc, label(tc, "s[tiny=%d]", tiny), sv, (size_t)N * S, TOL_F32);
        check_f32(tc, label(tc, "rho[tiny=%d]", tiny), rho, (size_t)N * S, TOL_F32);
        check_f32(tc, label(tc, "alpha[tiny=%d]", tiny), alpha, (size_t)N * S, TOL_F32);
    }
}

/* Every gradient, each one left out, and none at all (must write nothing and not fault); then
 * every gradient with a tiny tap. s, rho, alpha come from the reference forward. */
static void t_mtsa_backward(tcase *tc, int arg)
{
    static const int wants[] = {7, 6, 5, 3, 0, 7}; /* bits: 1 dx, 2 dw, 4 dc */
    int K, N, d;
    mtsa_shape(arg, &K, &N, &d);
    const int S = K - 1, nwants = sizeof wants / sizeof wants[0];
    const float c0 = 0.05f;
    const size_t nx = (size_t)K * N * d;
    pair w = up_rand(tc, d, -1, 1), c = up(tc, &c0, sizeof c0);
    pair dz = up_rand(tc, (size_t)N * d, -1, 1);
    pair x = NONE, sv = NONE, rho = NONE, alpha = NONE;
    for (int v = 0; v < nwants; v++) {
        int want = wants[v], tiny = v == nwants - 1;
        if (v == 0 || tiny) {
            x = up(tc, host_taps(tc, K, N, d, tiny), sizeof(float) * nx);
            pair z = up_poison(tc, (size_t)N * d);
            sv = up_poison(tc, (size_t)N * S);
            rho = up_poison(tc, (size_t)N * S);
            alpha = up_poison(tc, (size_t)N * S);
            tc->bk[REF]->mtsa_guide_forward(z.p[REF], sv.p[REF], rho.p[REF], alpha.p[REF],
                                            x.p[REF], w.p[REF], c.p[REF], K, N, d);
            sv = shared(tc, sv, sizeof(float) * N * S);
            rho = shared(tc, rho, sizeof(float) * N * S);
            alpha = shared(tc, alpha, sizeof(float) * N * S);
        }
        pair dx = want & 1 ? up_grad(tc, nx) : NONE;
        pair dw = want & 2 ? up_grad(tc, d) : NONE, dc = want & 4 ? up_grad(tc, 1) : NONE;
        ON_BOTH(tc, be->mtsa_guide_backward(P(dx), P(dw), P(dc), P(dz), P(x), P(w), P(sv), P(rho),
                                            P(alpha), K, N, d));
        if (!settle(tc, "mtsa_guide_backward"))
            return;
        check_f32(tc, label(tc, "dx[want=%d,tiny=%d]", want, tiny), dx, nx, TOL_F32);
        check_f32(tc, label(tc, "dw[want=%d,tiny=%d]", want, tiny), dw, d, TOL_F32);
        check_f32(tc, label(tc, "dc[want=%d,tiny=%d]", want, tiny), dc, 1, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * tanh gate */

static const float gate_lambdas[] = {0.3f, -0.7f};
#define GATE_TEMP 0.5f

static void t_gate_add_forward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair y = up_rand(tc, n, -1, 1), h = up_rand(tc, n, -1, 1);
        for (int l = 0; l < 2; l++) {
            pair lambda = up(tc, &gate_lambdas[l], sizeof(float)), out = up_poison(tc, n);
            ON_BOTH(tc, be->gate_add_forward(P(out), P(y), P(h), P(lambda), GATE_TEMP, n));
            if (!settle(tc, "gate_add_forward"))
                return;
            check_f32(tc, label(tc, "out[n=%zu,lambda=%g]", n, gate_lambdas[l]), out, n, TOL_F32);
        }
    }
}

static void t_gate_add_backward(tcase *tc, int arg)
{
    static const int wants[] = {3, 2, 1}; /* bits: 1 dy, 2 dlambda */
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair dout = up_rand(tc, n, -1, 1), h = up_rand(tc, n, -1, 1);
        pair lambda = up(tc, &gate_lambdas[i], sizeof(float));
        for (int v = 0; v < 3; v++) {
            pair dy = wants[v] & 1 ? up_grad(tc, n) : NONE;
            pair dl = wants[v] & 2 ? up_grad(tc, 1) : NONE;
            ON_BOTH(tc, be->gate_add_backward(P(dy), P(dl), P(dout), P(h), P(lambda), GATE_TEMP,
                                              n));
            if (!settle(tc, "gate_add_backward"))
                return;
            check_f32(tc, label(tc, "dy[n=%zu,want=%d]", n, wants[v]), dy, n, TOL_F32);
            check_f32(tc, label(tc, "dlambda[n=%zu,want=%d]", n, wants[v]), dl, 1, TOL_F32);
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * losses */

/* Labels anywhere in [0, C), the first and last class among them. */
static pair up_labels(tcase *tc, int B, int C)
{
    int32_t *labels = host(tc, sizeof(int32_t) * B);
    for (int b = 0; b < B; b++)
        labels[b] = below(tc, C);
    labels[0] = C - 1;
    labels[1] = 0;
    return up(tc, labels, sizeof(int32_t) * B);
}

static void t_crossentropy_forward(tcase *tc, int big)
{
    const int B = big ? 64 : 37, C = big ? 1001 : 83;
    pair logits = up_rand(tc, (size_t)B * C, -5, 5), labels = up_labels(tc, B, C);
    pair losses = up_poison(tc, B), probs = up_poison(tc, (size_t)B * C);
    ON_BOTH(tc, be->crossentropy_forward(P(losses), P(probs), P(logits), P(labels), B, C));
    if (!settle(tc, "crossentropy_forward"))
        return;
    check_f32(tc, "losses", losses, B, TOL_F32);
    check_f32(tc, "probs", probs, (size_t)B * C, TOL_F32);
}

static void t_crossentropy_backward(tcase *tc, int big)
{
    const int B = big ? 64 : 37, C = big ? 1001 : 83;
    pair logits = up_rand(tc, (size_t)B * C, -5, 5), labels = up_labels(tc, B, C);
    pair losses = up_poison(tc, B), probs = up_poison(tc, (size_t)B * C);
    tc->bk[REF]->crossentropy_forward(losses.p[REF], probs.p[REF], logits.p[REF], labels.p[REF],
                                      B, C);
    probs = shared(tc, probs, sizeof(float) * B * C);
    pair dlogits = up_grad(tc, (size_t)B * C);
    ON_BOTH(tc, be->crossentropy_backward(P(dlogits), P(probs), P(labels), 1.0f / B, B, C));
    if (!settle(tc, "crossentropy_backward"))
        return;
    check_f32(tc, "dlogits", dlogits, (size_t)B * C, TOL_F32);
}

static void t_mse_forward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        int B = (int)elementwise_sizes[i];
        pair pred = up_rand(tc, B, -1, 1), target = up_rand(tc, B, -1, 1);
        pair losses = up_poison(tc, B);
        ON_BOTH(tc, be->mse_forward(P(losses), P(pred), P(target), B));
        if (!settle(tc, "mse_forward"))
            return;
        check_f32(tc, label(tc, "losses[B=%d]", B), losses, B, TOL_F32);
    }
}

static void t_mse_backward(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        int B = (int)elementwise_sizes[i];
        pair pred = up_rand(tc, B, -1, 1), target = up_rand(tc, B, -1, 1), dpred = up_grad(tc, B);
        ON_BOTH(tc, be->mse_backward(P(dpred), P(pred), P(target), 1.0f / B, B));
        if (!settle(tc, "mse_backward"))
            return;
        check_f32(tc, label(tc, "dpred[B=%d]", B), dpred, B, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * optimizer and reductions */

/* Three steps (t = 1..3, bias corrections differ) from zero moments, a fresh gradient each
 * step, checked after every step. lr is large enough that an update off by 1% of itself
 * moves param by more than the tolerance. */
static void t_adamw_update(tcase *tc, int arg)
{
    static const struct {
        size_t n;
        float lr, b1, b2, eps, wd;
    } cfgs[] = {{NBIG, 0.05f, 0.9f, 0.999f, 1e-8f, 0.1f}, {37, 0.01f, 0.8f, 0.99f, 1e-6f, 0.0f}};
    for (int k = 0; k < 2; k++) {
        size_t n = cfgs[k].n;
        pair param = up_rand(tc, n, -1, 1);
        pair m = up(tc, host(tc, n * sizeof(float)), n * sizeof(float));
        pair v = up(tc, host(tc, n * sizeof(float)), n * sizeof(float));
        for (int t = 1; t <= 3; t++) {
            pair grad = up_rand(tc, n, -1, 1);
            ON_BOTH(tc, be->adamw_update(P(param), P(grad), P(m), P(v), n, cfgs[k].lr, cfgs[k].b1,
                                         cfgs[k].b2, cfgs[k].eps, cfgs[k].wd, t));
            if (!settle(tc, "adamw_update"))
                return;
            check_f32(tc, label(tc, "param[n=%zu,t=%d]", n, t), param, n, TOL_F32);
            check_f32(tc, label(tc, "m[n=%zu,t=%d]", n, t), m, n, TOL_F32);
            check_f32(tc, label(tc, "v[n=%zu,t=%d]", n, t), v, n, TOL_F32);
        }
    }
}

/* Empty, small, whole chunks, and long with a partial last chunk (n not a multiple of 8192). */
static void t_sumsq(tcase *tc, int arg)
{
    static const size_t sizes[] = {0, 37, 3 * 8192, 1000003};
    for (int i = 0; i < 4; i++) {
        size_t n = sizes[i];
        pair x = up_rand(tc, n ? n : 1, -1, 1);
        double r[2];
        ON_BOTH(tc, r[side_] = be->sumsq(P(x), n));
        if (!settle(tc, "sumsq"))
            return;
        check_scalar(tc, label(tc, "sumsq[n=%zu]", n), r[GOT], r[REF], TOL_SUMSQ);
    }
}

static void t_scale(tcase *tc, int arg)
{
    for (int i = 0; i < 2; i++) {
        size_t n = elementwise_sizes[i];
        pair x = up_rand(tc, n, -1, 1);
        ON_BOTH(tc, be->scale(P(x), n, -0.37f));
        if (!settle(tc, "scale"))
            return;
        check_f32(tc, label(tc, "x[n=%zu]", n), x, n, TOL_F32);
    }
}

/* ------------------------------------------------------------------------------------------
 * the suite */

typedef struct {
    const char *name; /* op.variant: --filter and the self-test's mutations select by it */
    void (*fn)(tcase *tc, int arg);
    int arg;
} test_def;

static const test_def tests[] = {
    {"memory", t_memory, 0},
    {"f32_to_bf16", t_f32_to_half, 0},
    {"bf16_to_f32", t_half_to_f32, 0},
    {"f32_to_f16", t_f32_to_half, 1},
    {"f16_to_f32", t_half_to_f32, 1},
    {"gemm.small", t_gemm, 0},
    {"gemm.big", t_gemm, 1},
    {"gemm_strided_batched.small", t_gsb_small, 0},
    {"gemm_strided_batched.attention", t_gsb_attention, 0},
    {"gemm_bf16.small", t_gemm_half, 0},
    {"gemm_bf16.big", t_gemm_half, 1},
    {"gemm_f16.small", t_gemm_half, 2},
    {"gemm_f16.big", t_gemm_half, 3},
    {"gemm_bf16_strided_batched.small", t_gsb_half, 0},
    {"gemm_bf16_strided_batched.big", t_gsb_half, 1},
    {"gemm_f16_strided_batched.small", t_gsb_half, 2},
    {"gemm_f16_strided_batched.big", t_gsb_half, 3},
    {"matmul_forward.nobias", t_matmul_forward, 0},
    {"matmul_forward.bias", t_matmul_forward, 1},
    {"matmul_forward.big", t_matmul_forward, 2},
    {"matmul_backward.small", t_matmul_backward, 0},
    {"matmul_backward.big", t_matmul_backward, 1},
    {"bias_add_forward", t_bias_add_forward, 0},
    {"bias_add_backward", t_bias_add_backward, 0},
    {"bias_add_grouped_forward", t_bias_add_grouped_forward, 0},
    {"bias_add_grouped_backward.small", t_bias_add_grouped_backward, 0},
    {"bias_add_grouped_backward.big", t_bias_add_grouped_backward, 1},
    {"layernorm_forward.small", t_layernorm_forward, 0},
    {"layernorm_forward.big", t_layernorm_forward, 1},
    {"residual_layernorm_forward.bf16", t_residual_layernorm, SHERL_HALF_BF16},
    {"residual_layernorm_forward.f16", t_residual_layernorm, SHERL_HALF_F16},
    {"layernorm_backward.small", t_layernorm_backward, 0},
    {"layernorm_backward.big", t_layernorm_backward, 1},
    {"layernorm_grouped_forward.small", t_layernorm_grouped_forward, 0},
    {"layernorm_grouped_forward.big", t_layernorm_grouped_forward, 1},
    {"layernorm_grouped_backward.small", t_layernorm_grouped_backward, 0},
    {"layernorm_grouped_backward.big", t_layernorm_grouped_backward, 1},
    {"layernorm_grouped_backward.many", t_layernorm_grouped_backward, 2},
    {"gelu_forward", t_gelu_forward, 0},
    {"gelu_backward", t_gelu_backward, 0},
    {"bias_gelu_half_forward.bf16", t_bias_gelu_half, SHERL_HALF_BF16},
    {"bias_gelu_half_forward.f16", t_bias_gelu_half, SHERL_HALF_F16},
    {"bias_half_round_forward.bf16", t_bias_half_round, SHERL_HALF_BF16},
    {"bias_half_round_forward.f16", t_bias_half_round, SHERL_HALF_F16},
    {"softmax_forward.small", t_softmax_forward, 0},
    {"softmax_forward.big", t_softmax_forward, 1},
    {"softmax_backward.small", t_softmax_backward, 0},
    {"softmax_backward.big", t_softmax_backward, 1},
    {"attention_forward.small", t_attention_forward, 0},
    {"attention_forward.big", t_attention_forward, 1},
    {"attention_half_forward.small.bf16", t_attention_half_forward, SHERL_HALF_BF16},
    {"attention_half_forward.small.f16", t_attention_half_forward, SHERL_HALF_F16},
    {"attention_half_forward.big.bf16", t_attention_half_forward, 2 + SHERL_HALF_BF16},
    {"attention_half_forward.big.f16", t_attention_half_forward, 2 + SHERL_HALF_F16},
    {"attention_half_fused.t19_hs21.bf16", t_attention_half_fused, 0 + SHERL_HALF_BF16},
    {"attention_half_fused.t19_hs21.f16", t_attention_half_fused, 0 + SHERL_HALF_F16},
    {"attention_half_fused.t130_hs64.bf16", t_attention_half_fused, 2 + SHERL_HALF_BF16},
    {"attention_half_fused.t130_hs64.f16", t_attention_half_fused, 2 + SHERL_HALF_F16},
    {"attention_half_fused.t70_hs48.bf16", t_attention_half_fused, 4 + SHERL_HALF_BF16},
    {"attention_half_fused.t5_hs16.bf16", t_attention_half_fused, 6 + SHERL_HALF_BF16},
    {"attention_half_fused.t33_hs160.bf16", t_attention_half_fused, 8 + SHERL_HALF_BF16},
    {"attention_half_fused.t17_hsmax.bf16", t_attention_half_fused, 10 + SHERL_HALF_BF16},
    {"attention_half_fused.t40_hs20.f16", t_attention_half_fused, 12 + SHERL_HALF_F16},
    {"attention_half_fused.t512_hs64.bf16", t_attention_half_fused, 14 + SHERL_HALF_BF16},
    {"attention_half_fused.t256_hs64.f16", t_attention_half_fused, 16 + SHERL_HALF_F16},
    {"attention_half_fused.t130_hsmax.bf16", t_attention_half_fused, 18 + SHERL_HALF_BF16},
    {"attention_half16.t19_hs21.bf16", t_attention_half16, 0 + SHERL_HALF_BF16},
    {"attention_half16.t130_hs64.bf16", t_attention_half16, 2 + SHERL_HALF_BF16},
    {"attention_half16.t130_hs64.f16", t_attention_half16, 2 + SHERL_HALF_F16},
    {"attention_half16.t33_hs160.bf16", t_attention_half16, 4 + SHERL_HALF_BF16},
    {"linear_half16.bf16", t_linear_half16, SHERL_HALF_BF16},
    {"linear_half16.f16", t_linear_half16, SHERL_HALF_F16},
    {"attention_backward.small", t_attention_backward, 0},
    {"attention_backward.big", t_attention_backward, 1},
    {"attention_backward.groups", t_attention_backward, 2},
    {"embedding_forward.small", t_embedding_forward, 0},
    {"embedding_forward.big", t_embedding_forward, 1},
    {"embedding_forward_bf16.small", t_embedding_forward_half, 0},
    {"embedding_forward_bf16.big", t_embedding_forward_half, 1},
    {"embedding_forward_f16.small", t_embedding_forward_half, 2},
    {"embedding_forward_f16.big", t_embedding_forward_half, 3},
    {"embedding_backward.small", t_embedding_backward, 0},
    {"embedding_backward.big", t_embedding_backward, 1},
    {"residual_forward", t_residual_forward, 0},
    {"residual_backward", t_residual_backward, 0},
    {"dropout_forward", t_dropout_forward, 0},
    {"dropout_backward", t_dropout_backward, 0},
    {"mean_pool_forward.small", t_mean_pool_forward, 0},
    {"mean_pool_forward.big", t_mean_pool_forward, 1},
    {"mean_pool_backward.small", t_mean_pool_backward, 0},
    {"mean_pool_backward.big", t_mean_pool_backward, 1},
    {"l2norm_forward", t_l2norm_forward, 0},
    {"l2norm_backward", t_l2norm_backward, 0},
    {"relu_forward", t_relu_forward, 0},
    {"relu_backward", t_relu_backward, 0},
    {"mtsa_guide_forward.K2", t_mtsa_forward, 2},
    {"mtsa_guide_forward.K4", t_mtsa_forward, 4},
    {"mtsa_guide_forward.K7", t_mtsa_forward, 7},
    {"mtsa_guide_forward.K12big", t_mtsa_forward, MTSA_BIG + 12},
    {"mtsa_guide_backward.K2", t_mtsa_backward, 2},
    {"mtsa_guide_backward.K4", t_mtsa_backward, 4},
    {"mtsa_guide_backward.K7", t_mtsa_backward, 7},
    {"mtsa_guide_backward.K12big", t_mtsa_backward, MTSA_BIG + 12},
    {"gate_add_forward", t_gate_add_forward, 0},
    {"gate_add_backward", t_gate_add_backward, 0},
    {"crossentropy_forward.small", t_crossentropy_forward, 0},
    {"crossentropy_forward.big", t_crossentropy_forward, 1},
    {"crossentropy_backward.small", t_crossentropy_backward, 0},
    {"crossentropy_backward.big", t_crossentropy_backward, 1},
    {"mse_forward", t_mse_forward, 0},
    {"mse_backward", t_mse_backward, 0},
    {"adamw_update", t_adamw_update, 0},
    {"sumsq", t_sumsq, 0},
    {"scale", t_scale, 0},
};

#define NTESTS (sizeof tests / sizeof tests[0])

/* A filter is a substring of the test's name, or with a leading ^ its beginning. */
static int selected(const test_def *t, const char *filter)
{
    if (filter && filter[0] == '^')
        return strncmp(t->name, filter + 1, strlen(filter + 1)) == 0;
    return !filter || strstr(t->name, filter) != NULL;
}

/* Runs one test against `tested`; 1 when it passed. */
static int run_test(const test_def *t, const sherl_backend *tested, int verbose, int quiet)
{
    tcase tc = {.name = t->name, .bk = {sherl_backend_cpu(), tested}, .rng = seed_of(t->name),
                .ratio = -1.0, .verbose = verbose, .quiet = quiet};
    t->fn(&tc, t->arg);
    /* every failure of this test's calls is reported here, down to its frees, so none is left
     * for the next test */
    if (settle(&tc, "end of test")) {
        check_guards(&tc);
        settle(&tc, "guard check");
    }
    if (!tc.failed && tc.checks == 0)
        fail(&tc, "compared nothing");
    release(&tc);
    settle(&tc, "free");
    if (!tc.failed && !quiet)
        printf("ok   %s  err=%.3g tol=%g\n", t->name, tc.err, tc.tol);
    fflush(stdout);
    return !tc.failed;
}

typedef struct {
    int run, passed;
} tally;

static tally run_suite(const sherl_backend *tested, const char *filter, int verbose, int quiet)
{
    tally r = {0, 0};
    for (size_t i = 0; i < NTESTS; i++)
        if (selected(&tests[i], filter)) {
            r.run++;
            r.passed += run_test(&tests[i], tested, verbose, quiet);
        }
    return r;
}

/* ------------------------------------------------------------------------------------------
 * self-test: mutated copies of the CPU table, each with one op slightly wrong, run as the
 * tested backend against the real CPU; every selected test must fail. The wrappers call the
 * real op, then break its result the way a GPU kernel bug would. */

static const sherl_backend *real_ops;
static int mut_calls;

/* The largest entry, off by a relative 1e-3. */
static void perturb_max(float *x, size_t n)
{
    size_t at = 0;
    for (size_t i = 1; i < n; i++)
        if (fabsf(x[i]) > fabsf(x[at]))
            at = i;
    if (n)
        x[at] *= 1.0f + 1e-3f;
}

/* gemm: the last element of C is never written */
static void mut_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc)
{
    float *last = C + (size_t)(M - 1) * ldc + (N - 1), before = *last;
    real_ops->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    *last = before;
}

/* gemm_strided_batched: the last batch is not computed */
static void mut_gemm_strided_batched(int ta, int tb, int M, int N, int K, float alpha,
                                     const float *A, int lda, long long sa, const float *B,
                                     int ldb, long long sb, float beta, float *C, int ldc,
                                     long long sc, int batch)
{
    real_ops->gemm_strided_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                                   sc, batch - 1);
}

/* f32_to_bf16: the last element rounded one bf16 step off */
static void mut_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    real_ops->f32_to_bf16(dst, src, n);
    if (n)
        dst[n - 1] ^= 1u;
}

/* bias_gelu_half_forward: the last element two half steps off */
static void mut_bias_gelu_half_forward(uint16_t *out16, const float *x, const float *bias, int N,
                                       int C, int type)
{
    real_ops->bias_gelu_half_forward(out16, x, bias, N, C, type);
    if (N > 0 && C > 0) {
        uint16_t last;
        size_t at = (size_t)N * C - 1;
        real_ops->copy_to_host(&last, out16 + at, sizeof last);
        last = (uint16_t)(last ^ 2u);
        real_ops->copy_to_device(out16 + at, &last, sizeof last);
    }
}

/* residual_layernorm_forward: the residual left out of the last row */
static void mut_residual_layernorm_forward(float *out, uint16_t *out16, float *res, float *mean,
                                           float *rstd, const float *x, const float *lin_bias,
                                           const float *resid, const float *weight,
                                           const float *bias, int N, int C, float eps, int type)
{
    real_ops->residual_layernorm_forward(out, out16, res, mean, rstd, x, lin_bias, resid, weight,
                                         bias, N - 1, C, eps, type);
    size_t at = (size_t)(N - 1) * C;
    float *sum = res ? res : out; /* without res, the row passes through out */
    if (N > 0 && sum != x)
        real_ops->copy_device(sum + at, x + at, (size_t)C * sizeof(float));
    if (N > 0)
        real_ops->layernorm_forward(out + at, mean ? mean + N - 1 : NULL,
                                    rstd ? rstd + N - 1 : NULL, sum + at, weight, bias, 1, C,
                                    eps);
}

/* bias_half_round_forward: the last row left as it was */
static void mut_bias_half_round_forward(float *x, uint16_t *x16, const float *bias, int N, int C,
                                        int type)
{
    real_ops->bias_half_round_forward(x, x16, bias, N - 1, C, type);
}

static void mut_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, int N, int C, int OC)
{
    real_ops->matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    if (dbias)
        perturb_max(dbias, OC);
}

static void mut_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                  const float *weight, const float *bias, int N, int C, float eps)
{
    real_ops->layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
    perturb_max(out, (size_t)N * C);
}

static void mut_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                   const float *inp, const float *weight, const float *mean,
                                   const float *rstd, int N, int C)
{
    real_ops->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    if (dweight)
        perturb_max(dweight, C);
}

/* gemm_bf16_strided_batched / gemm_f16_strided_batched: the last batch is not computed */
static void mut_gemm_bf16_strided_batched(int ta, int tb, int M, int N, int K, float alpha,
                                          const uint16_t *A, int lda, long long sa,
                                          const uint16_t *B, int ldb, long long sb, float beta,
                                          float *C, int ldc, long long sc, int batch)
{
    real_ops->gemm_bf16_strided_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C,
                                        ldc, sc, batch - 1);
}

static void mut_gemm_f16_strided_batched(int ta, int tb, int M, int N, int K, float alpha,
                                         const uint16_t *A, int lda, long long sa,
                                         const uint16_t *B, int ldb, long long sb, float beta,
                                         float *C, int ldc, long long sc, int batch)
{
    real_ops->gemm_f16_strided_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C,
                                       ldc, sc, batch - 1);
}

/* bias_add_grouped_backward: the last group's gradient is lost */
static void mut_bias_add_grouped_backward(float *dbias, long long bias_stride, const float *dout,
                                          int G, int N, int C)
{
    real_ops->bias_add_grouped_backward(dbias, bias_stride, dout, G - 1, N, C);
}

/* layernorm_grouped_forward: every group normalised with group 0's weight and bias */
static void mut_layernorm_grouped_forward(float *out, float *mean, float *rstd,
                                          long long stat_stride, const float *inp,
                                          const float *weight, const float *bias,
                                          long long param_stride, int G, int N, int C, float eps)
{
    real_ops->layernorm_grouped_forward(out, mean, rstd, stat_stride, inp, weight, bias, 0, G, N,
                                        C, eps);
}

/* layernorm_grouped_backward: the statistics read as if packed (stat_stride taken as N) */
static void mut_layernorm_grouped_backward(float *dinp, float *dweight, float *dbias,
                                           long long param_stride, const float *dout,
                                           const float *inp, const float *weight,
                                           const float *mean, const float *rstd,
                                           long long stat_stride, int G, int N, int C)
{
    real_ops->layernorm_grouped_backward(dinp, dweight, dbias, param_stride, dout, inp, weight,
                                         mean, rstd, N, G, N, C);
}

/* softmax_forward: the last element of out is never written */
static void mut_softmax_forward(float *out, const float *inp, const float *mask, float scale,
                                int B, int H, int Tq, int Tk)
{
    float *last = out + (size_t)B * H * Tq * Tk - 1, before = *last;
    real_ops->softmax_forward(out, inp, mask, scale, B, H, Tq, Tk);
    *last = before;
}

static void mut_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *probs, int B, int T, int NH, int HS)
{
    real_ops->attention_backward(dqkv, dout, qkv, probs, B, T, NH, HS);
    perturb_max(dqkv, (size_t)B * T * 3 * NH * HS);
}

/* attention_half_forward: out from the unrounded probabilities (which it then rounds) */
static void mut_attention_half_forward(float *out, float *probs, const float *qkv,
                                       const float *mask, int B, int T, int NH, int HS, int type)
{
    real_ops->attention_forward(out, probs, qkv, mask, B, T, NH, HS);
    for (size_t i = 0; i < (size_t)B * NH * T * T; i++)
        probs[i] = sherl_half_round_f32(probs[i], type);
}

/* attention_half_forward without probabilities ignores the mask */
static void mut_attention_half_fused(float *out, float *probs, const float *qkv,
                                     const float *mask, int B, int T, int NH, int HS, int type)
{
    real_ops->attention_half_forward(out, probs, qkv, probs ? mask : NULL, B, T, NH, HS, type);
}

/* attention_half16_forward ignores the mask */
static void mut_attention_half16_forward(uint16_t *out16, const uint16_t *qkv16,
                                         const float *mask, int B, int T, int NH, int HS, int type)
{
    real_ops->attention_half16_forward(out16, qkv16, NULL, B, T, NH, HS, type);
}

/* linear_half16_forward: the last output row's bias left out */
static void mut_linear_half16_forward(uint16_t *out16, float *tmp, const uint16_t *inp16,
                                      const uint16_t *w16, const float *bias, int N, int C, int OC,
                                      int type)
{
    real_ops->linear_half16_forward(out16, tmp, inp16, w16, bias, N, C, OC, type);
    if (N > 1)
        real_ops->linear_half16_forward(out16 + (size_t)(N - 1) * OC, tmp, inp16 + (size_t)(N - 1) * C,
                                        w16, NULL, 1, C, OC, type);
}

/* embedding_backward: the last token's gradient is lost */
static void mut_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N,
                                   int C)
{
    real_ops->embedding_backward(dtable, dout, ids, N - 1, C);
}

/* dropout_forward: one element's keep/drop decision flipped */
static void mut_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed,
                                uint64_t offset)
{
    size_t i = n / 2;
    float x = inp[i]; /* before an in-place op overwrites it */
    real_ops->dropout_forward(out, inp, n, p, seed, offset);
    out[i] = out[i] != 0.0f ? 0.0f : x / (1.0f - p);
}

/* l2norm_backward: the last row's gradient is lost */
static void mut_l2norm_backward(float *dinp, const float *dout, const float *inp, int N, int C,
                                float eps)
{
    real_ops->l2norm_backward(dinp, dout, inp, N - 1, C, eps);
}

static void mut_mtsa_guide_backward(float *dx, float *dw, float *dc, const float *dz,
                                    const float *x, const float *w, const float *s,
                                    const float *rho, const float *alpha, int K, int N, int d)
{
    real_ops->mtsa_guide_backward(dx, dw, dc, dz, x, w, s, rho, alpha, K, N, d);
    if (dw)
        perturb_max(dw, d);
}

static void mut_gate_add_backward(float *dy, float *dlambda, const float *dout, const float *h,
                                  const float *lambda, float temp, size_t n)
{
    real_ops->gate_add_backward(dy, dlambda, dout, h, lambda, temp, n);
    if (dlambda)
        dlambda[0] *= 1.0f + 1e-3f;
}

/* relu_forward: one element written past the end (a last block not bounded by n) */
static void mut_relu_forward(float *out, const float *inp, size_t n)
{
    real_ops->relu_forward(out, inp, n);
    out[n] = 0.0f;
}

/* crossentropy_backward: overwrites dlogits instead of accumulating */
static void mut_crossentropy_backward(float *dlogits, const float *probs, const int32_t *labels,
                                      float scale, int B, int C)
{
    memset(dlogits, 0, sizeof(float) * (size_t)B * C);
    real_ops->crossentropy_backward(dlogits, probs, labels, scale, B, C);
}

/* adamw_update: only the first call writes through */
static void mut_adamw_update(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             int t)
{
    if (mut_calls++ == 0)
        real_ops->adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
}

static double mut_sumsq(const float *x, size_t n)
{
    return real_ops->sumsq(x, n) * (1.0 + 1e-5);
}

/* scale computes the right numbers but records a failure, as a failed kernel launch would:
 * take_error must be asked, and its answer must fail the test. */
static int mut_fault;

static void mut_scale(float *x, size_t n, float s)
{
    real_ops->scale(x, n, s);
    mut_fault = 1;
}

static int mut_take_error(char *msg, size_t len)
{
    int failed = mut_fault;
    mut_fault = 0;
    if (msg && len)
        snprintf(msg, len, "%s", failed ? "scale_kernel: injected launch failure" : "");
    return failed ? -1 : 0;
}

static void install_scale(sherl_backend *be)
{
    be->scale = mut_scale;
    be->take_error = mut_take_error;
}

#define INSTALL(op)                                                                          \
    static void install_##op(sherl_backend *be) { be->op = mut_##op; }
INSTALL(gemm)
INSTALL(gemm_strided_batched)
INSTALL(f32_to_bf16)
INSTALL(matmul_backward)
INSTALL(bias_gelu_half_forward)
INSTALL(bias_half_round_forward)
INSTALL(residual_layernorm_forward)
INSTALL(layernorm_forward)
INSTALL(layernorm_backward)
INSTALL(gemm_bf16_strided_batched)
INSTALL(gemm_f16_strided_batched)
INSTALL(bias_add_grouped_backward)
INSTALL(layernorm_grouped_forward)
INSTALL(layernorm_grouped_backward)
INSTALL(softmax_forward)
INSTALL(attention_backward)
INSTALL(attention_half_forward)
INSTALL(attention_half16_forward)
INSTALL(linear_half16_forward)
static void install_attention_half_fused(sherl_backend *be)
{
    be->attention_half_forward = mut_attention_half_fused;
}
INSTALL(embedding_backward)
INSTALL(dropout_forward)
INSTALL(l2norm_backward)
INSTALL(mtsa_guide_backward)
INSTALL(gate_add_backward)
INSTALL(relu_forward)
INSTALL(crossentropy_backward)
INSTALL(adamw_update)
INSTALL(sumsq)

typedef struct {
    const char *tests; /* the filter selecting the tests that must catch it */
    const char *what;
    void (*install)(sherl_backend *be);
} mutation;

static const mutation mutations[] = {
    {"gemm.", "gemm leaves the last element of C unwritten", install_gemm},
    {"gemm_strided_batched.", "gemm_strided_batched skips the last batch",
     install_gemm_strided_batched},
    {"f32_to_bf16", "f32_to_bf16 rounds the last element one step off", install_f32_to_bf16},
    {"matmul_backward.", "matmul_backward: dbias off by 1e-3", install_matmul_backward},
    {"bias_gelu_half_forward.", "bias_gelu_half_forward: the last element 2 steps off",
     install_bias_gelu_half_forward},
    {"bias_half_round_forward.", "bias_half_round_forward skips the last row",
     install_bias_half_round_forward},
    {"residual_layernorm_forward.", "residual_layernorm_forward leaves the last row's residual "
     "out", install_residual_layernorm_forward},
    {"^layernorm_forward.", "layernorm_forward: out off by 1e-3", install_layernorm_forward},
    {"layernorm_backward.", "layernorm_backward: dweight off by 1e-3",
     install_layernorm_backward},
    {"gemm_bf16_strided_batched.", "gemm_bf16_strided_batched skips the last batch",
     install_gemm_bf16_strided_batched},
    {"gemm_f16_strided_batched.", "gemm_f16_strided_batched skips the last batch",
     install_gemm_f16_strided_batched},
    {"bias_add_grouped_backward.", "bias_add_grouped_backward drops the last group",
     install_bias_add_grouped_backward},
    {"layernorm_grouped_forward.", "layernorm_grouped_forward uses group 0's parameters",
     install_layernorm_grouped_forward},
    {"layernorm_grouped_backward.", "layernorm_grouped_backward reads the statistics packed",
     install_layernorm_grouped_backward},
    {"softmax_forward.", "softmax_forward leaves the last element unwritten",
     install_softmax_forward},
    {"attention_backward.", "attention_backward: dqkv off by 1e-3", install_attention_backward},
    {"attention_half_forward.", "attention_half_forward: out from the unrounded probabilities",
     install_attention_half_forward},
    {"attention_half_fused.", "attention_half_forward without probabilities ignores the mask",
     install_attention_half_fused},
    {"attention_half16.", "attention_half16_forward ignores the mask",
     install_attention_half16_forward},
    {"linear_half16.", "linear_half16_forward leaves the last row's bias out",
     install_linear_half16_forward},
    {"embedding_backward.", "embedding_backward drops the last token",
     install_embedding_backward},
    {"dropout_forward", "dropout_forward flips one mask element", install_dropout_forward},
    {"l2norm_backward", "l2norm_backward drops the last row", install_l2norm_backward},
    {"mtsa_guide_backward.", "mtsa_guide_backward: dw off by 1e-3", install_mtsa_guide_backward},
    {"gate_add_backward", "gate_add_backward: dlambda off by 1e-3", install_gate_add_backward},
    {"relu_forward", "relu_forward writes one element past the end", install_relu_forward},
    {"crossentropy_backward.", "crossentropy_backward overwrites instead of accumulating",
     install_crossentropy_backward},
    {"adamw_update", "adamw_update writes through only on its first call", install_adamw_update},
    {"sumsq", "sumsq returns 1e-5 too much", install_sumsq},
    {"scale", "scale reports a failed launch through take_error", install_scale},
};

#define NMUTATIONS (sizeof mutations / sizeof mutations[0])

static int self_test(int verbose)
{
    real_ops = sherl_backend_cpu();
    tally clean = run_suite(real_ops, NULL, verbose, !verbose);
    printf("self-test: unmutated cpu: %d passed, %d failed of %d\n", clean.passed,
           clean.run - clean.passed, clean.run);
    int detected = 0;
    for (size_t i = 0; i < NMUTATIONS; i++) {
        const mutation *m = &mutations[i];
        sherl_backend mutant = *real_ops;
        mutant.name = "cpu (mutated)";
        m->install(&mutant);
        mut_calls = 0;
        tally r = run_suite(&mutant, m->tests, verbose, !verbose);
        int caught = r.run > 0 && r.passed == 0;
        detected += caught;
        printf("self-test: %s %s: %d of %d tests failed\n", caught ? "detected" : "MISSED",
               m->what, r.run - r.passed, r.run);
    }
    printf("self-test: %d mutations detected of %d\n", detected, (int)NMUTATIONS);
    return clean.passed == clean.run && detected == (int)NMUTATIONS ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------
 * main */

static int usage(void)
{
    fprintf(stderr,
            "usage: gpu_ops [--backend NAME] [--require] [--self-test] [--filter SUBSTR|^PREFIX] "
            "[-v]\n");
    return 2;
}

/* No backend to test: say how much went untested and why, and pass (CI has no GPU). A GPU
 * that is there but gives no backend is a failure, not a skip. */
static int no_backend(const char *name, const char *filter, int require)
{
    int n = 0;
    for (size_t i = 0; i < NTESTS; i++)
        n += selected(&tests[i], filter);
    if (strcmp(name, "cuda") != 0) {
        fprintf(stderr, "gpu_ops: unknown backend '%s'\n", name);
        return 2;
    }
    char why[256];
    if (sherl_cuda_absent(why, sizeof why) == 0) {
        printf("gpu_ops: no GPU: %d tests not run (%s)%s\n", n, why,
               require ? "; --require makes that a failure" : "");
        return require;
    }
    printf("gpu_ops: cuda: %s: %d tests not run\n", why, n);
    return 1;
}

/* Each GPU's table runs on its GPU, from one thread, in any order: every usable device's
 * table reports that device's memory (as the runtime lists it) and runs a product there; a call
 * through the table of a device that is absent (15) fails in that device's record alone, and
 * the usable ones work on after it. Returns the failures. */
static int check_device_tables(void)
{
    sherl_device_info info[SHERL_CUDA_MAX_DEVICES];
    char why[256], msg[600];
    int n = sherl_cuda_devices(info, SHERL_CUDA_MAX_DEVICES, why, sizeof why), bad = 0, used = 0;
    const sherl_backend *absent = sherl_backend_cuda_table_for_tests(15);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < n && i < SHERL_CUDA_MAX_DEVICES; i++) {
            const sherl_backend *t = sherl_backend_cuda_device(i);
            if (!t)
                continue;
            used += round == 0;
            size_t fr = 0, tot = 0;
            if (t->mem_info(&fr, &tot) || tot != info[i].total_bytes) {
                printf("gpu_ops: devices: cuda:%d reports %zu bytes, the runtime lists %zu\n", i,
                       tot, info[i].total_bytes);
                bad++;
            }
            float h[256], *dv = t->alloc(sizeof h), *out = t->alloc(16 * 16 * sizeof(float));
            for (int k = 0; k < 256; k++)
                h[k] = (float)(k % 7) - 3.0f + (float)i;
            t->copy_to_device(dv, h, sizeof h);
            /* out = dv[16x16] . dv^T: on this device's stream and handle */
            t->gemm(0, 1, 16, 16, 16, 1.0f, dv, 16, dv, 16, 0.0f, out, 16);
            float o[256] = {0};
            t->copy_to_host(o, out, sizeof o);
            t->free(dv), t->free(out);
            double want = 0;
            for (int k = 0; k < 16; k++)
                want += (double)h[5 * 16 + k] * h[9 * 16 + k];
            if (t->take_error(msg, sizeof msg) || fabs(o[5 * 16 + 9] - want) > 1e-3) {
                printf("gpu_ops: devices: cuda:%d (round %d): %s; out[5,9] %g, expected %g\n", i,
                       round, msg, o[5 * 16 + 9], want);
                bad++;
            }
        }
        if (round == 0 && absent && !sherl_backend_cuda_device(15)) {
            absent->take_error(NULL, 0);
            void *p = absent->alloc(64);
            int failed = absent->take_error(msg, sizeof msg);
            if (p || !failed || !strstr(msg, "cuda:15")) {
                printf("gpu_ops: devices: a call on absent cuda:15 gave %p, record %d: %s\n", p,
                       failed, msg);
                bad++;
            }
        }
    }
    printf("gpu_ops: devices: %d usable of %d listed; each table on its own device, twice around "
           "a failed call on absent cuda:15: %s\n",
           used, n, bad ? "FAIL" : "PASS");
    return bad;
}

int main(int argc, char **argv)
{
    const char *name = "cuda", *filter = NULL;
    int verbose = 0, selftest = 0, require = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "--self-test") == 0)
            selftest = 1;
        else if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
        else if (strcmp(argv[i], "--require") == 0)
            require = 1;
        else
            return usage();
    }
    if (selftest)
        return self_test(verbose);

    const sherl_backend *be = sherl_backend_by_name(name);
    if (!be)
        return no_backend(name, filter, require);
    char desc[256] = "";
    be->describe(desc, sizeof desc);
    printf("gpu_ops: testing %s against cpu: %s\n", be->name, desc);
    tally r = run_suite(be, filter, verbose, 0);
    printf("gpu_ops: %s: %d passed, %d failed of %d\n", be->name, r.passed, r.run - r.passed,
           r.run);
    int devices_bad = !strcmp(be->name, "cuda") && !filter ? check_device_tables() : 0;
    return r.passed == r.run && !devices_bad ? 0 : 1;
}
