/* Branch-free float exp and erfc that the compiler can vectorise (glibc's expf/erff are
 * scalar calls, and erff alone was 12% of an encoder forward). Used inside loops marked
 * `#pragma omp simd` in functions compiled for several instruction sets (SHERL_SIMD_CLONES).
 *
 * exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the degree-7 Taylor polynomial
 * of e^r (truncation error < 5e-9 relative) and scaling by 2^n through the exponent bits.
 * Inputs below -87.3 give exactly 0, so masked softmax entries carry no weight at all.
 *
 * erfc (z >= 0): the Chebyshev-fitted form erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2),
 * whose fractional error is below 1.2e-7 (Numerical Recipes, "erfcc"); negative z use
 * erfc(z) = 2 - erfc(-z). */
#ifndef SHERL_SIMD_MATH_H
#define SHERL_SIMD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
/* One copy per instruction set, picked at load time by the CPU: AVX-512, AVX2+FMA, baseline. */
/* Dispatch is by CPU feature, not model name ("arch=..." would miss CPUs newer than the
 * compiler, exactly where the wide units are). */
#define SHERL_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SHERL_SIMD_CLONES
#endif

static inline float simd_expf(float x)
{
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round to nearest by adding and removing 1.5 * 2^23: no libm call, vectorises on SSE2 */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693145751953125f - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

static inline float simd_erfcf(float z)
{
    float a = fabsf(z);
    float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float r = t * simd_expf(-a * a + p);
    return z >= 0.0f ? r : 2.0f - r;
}

#endif
