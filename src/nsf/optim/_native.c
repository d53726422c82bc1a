/* The fused NSF step for contiguous float32 CPU tensors, in plain C (built once per machine by _native.py).
 *
 * The same arithmetic as the torch.compile kernels of _fused_kernels.py, with a loop structure inductor cannot
 * express: the grafted scales' first pass updates m and v *and* reduces the norms in one loop, so the exact graft
 * moves 9 words per element (read g, m, v, write m, v; then read m, v, θ, write θ) against Adam's 7; the raw
 * scale is one pass of 7. The exponent is a runtime argument (each loop is specialised on it by a switch), so one
 * library serves every p a schedule takes and nothing compiles mid-training.
 *
 * One call takes a whole step, tensor by tensor: the bias corrections and per-tensor scalars (as _fused._scalars
 * forms them), the passes, the graft ratio (as _single_tensor._graft_ratio decides it) and the step count.
 *
 * Covered: maximize and decoupled weight decay (a sign and a factor, exact when they are ±1 and 1). Not covered,
 * left to the compiled kernels: amsgrad and coupled weight decay.
 *
 * Sums are taken per block of BLOCK elements and added in block order: the result does not depend on the number
 * of threads.
 */
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef NSF_VECTOR_MATH  /* glibc's libmvec: vectorised expf/logf for the general exponent */
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float logf(float);
#endif

#define BLOCK 4096
#define PARALLEL_MIN 65536
#define INLINE static inline __attribute__((always_inline))

/* The step's options, common to every tensor (host values; the kernels' float32 copies are made here). */
typedef struct {
    double lr, beta1, beta2, eps, decay;  /* decay: 1 − ηλ under decoupled weight decay, else 1 */
    double low;       /* float32 sums below this may have underflowed (_fused._PLAIN_NORM_LOW²) */
    double a;         /* |p| */
    int eighths;      /* |p| = eighths/8 by square roots; 0: p = 0; −1: a general |p| by log and exp */
    int negative;     /* p < 0 */
    int scale;        /* 0 raw, 1 sgd-grafted, 2 adam-grafted */
    int maximize;
    int threads;
} Step;

/* One tensor: its data (float32, contiguous) and its step count (a float32 scalar, incremented here). */
typedef struct {
    float *th, *m, *v;
    const float* g;
    float* step;
    int64_t n;
} TensorRef;

/* What the loops read: one tensor's pointers and scalars, in float32 as the compiled kernels see them. */
typedef struct {
    float *th, *m, *v;
    const float* g;
    int64_t n;
    float alpha;     /* raw: the step factor; graft stage 2: −η·ratio */
    float eps;       /* ε·bc2^p for p > 0, else 0 */
    float inv_sqrt_bc2, adam_eps, inv_k;
    float sign;      /* −1 under maximize */
    float decay;     /* 1 − ηλ under decoupled weight decay, else exactly 1 */
    float omb1, beta2, omb2, a;
    int eighths, negative, sgd;
} Span;

/* x^|p|: square-root chains for |p| = e/8 (the product of the roots x^½, x^¼, x^⅛ that its binary digits select,
 * in that order, as _fused_kernels._power), exp(|p|·log x) for e < 0 (0 at x = 0). */
INLINE float power(float x, const int e, float a) {
    if (e < 0) return expf(logf(x) * a);
    if (e == 8) return x;
    float r2 = sqrtf(x), r4 = sqrtf(r2), r8 = sqrtf(r4);  /* unused roots are dropped by the compiler */
    float out = (e & 4) ? r2 : 1.0f;  /* 1·r is exact: the same product as starting from the first root */
    if (e & 2) out = out * r4;
    if (e & 1) out = out * r8;
    return out;
}

INLINE float lerp(float start, float end, float w) {  /* as ATen's vectorised lerp: one fused multiply-add */
    const int small = fabsf(w) < 0.5f;
    const float coeff = small ? w : w - 1.0f, base = small ? start : end;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    return fmaf(coeff, end - start, base);
#else
    return base + coeff * (end - start);
#endif
}

/* A span's pointers and scalars as locals: restrict pointers, which the loops need to vectorise (through the
 * struct, a store to m[i] might change s->th). */
#define LOCALS(s) \
    float* restrict th = (s)->th; float* restrict m = (s)->m; float* restrict v = (s)->v; \
    const float* restrict g = (s)->g; \
    const float sign = (s)->sign, decay = (s)->decay, omb1 = (s)->omb1, beta2 = (s)->beta2, omb2 = (s)->omb2, \
                a = (s)->a, eps = (s)->eps, alpha = (s)->alpha; \
    (void)th; (void)g; (void)sign; (void)decay; (void)omb1; (void)beta2; (void)omb2; (void)alpha; (void)a; \
    (void)eps

/* The new moments of coordinate i, written in place: (m, v). */
#define MOMENTS(i, mi, vi) \
    float gi_ = g[i] * sign; \
    float mi = lerp(m[i], gi_, omb1); \
    float vi = v[i] * beta2 + (omb2 * gi_) * gi_; \
    m[i] = mi; \
    v[i] = vi

/* q of the grafted direction m·q (_fused_kernels._graft_q), x already clamped to the largest float. */
INLINE float graft_q(float x, float eps, const int e, const int negative, float a) {
    if (e == 0) return 1.0f;
    float xp = power(x, e, a);
    if (e < 0) xp = xp > FLT_MAX ? FLT_MAX : xp;  /* fast kinds (|p| ≤ 1): x^|p| ≤ max(x, 1), finite */
    return negative ? xp : 1.0f / (xp + eps);
}

INLINE float clamp_max(float x) { return x > FLT_MAX ? FLT_MAX : x; }  /* NaN stays NaN */

/* Raw step: θ ← θ·decay + alpha·m·f(v), f = 1/(v^p + eps) (p > 0), v^|p| (p < 0), 1 (p = 0). */
INLINE void raw_span(const Span* s, int64_t b, int64_t end, const int e, const int negative) {
    LOCALS(s);
    #pragma omp simd
    for (int64_t i = b; i < end; ++i) {
        MOMENTS(i, mi, x);
        float d = e == 0 ? mi : (negative ? mi * power(x, e, a) : mi / (power(x, e, a) + eps));
        th[i] = th[i] * decay + alpha * d;
    }
}

/* The grafted norms' terms of one coordinate from its new m and v (_fused_kernels.graft_norms_kernel): over the
 * finite coordinates, m·q and the reference step r (up to 1/bc1), and q itself (for k = max q when p < 0). */
INLINE void terms(const Span* s, float mi, float vi, const int e, const int negative, const int sgd, float* mg,
                  float* qg, float* r) {
    float x = clamp_max(vi);  /* an overflowed v counts as the largest float */
    float q = graft_q(x, s->eps, e, negative, s->a);
    int good = (fabsf(mi) * 0.5f + x * 0.5f) < INFINITY;  /* m and v finite */
    float adam = mi / (sqrtf(x) * s->inv_sqrt_bc2 + s->adam_eps);  /* unconditional: a select vectorises */
    *mg = good ? mi : 0.0f;
    *qg = good ? q : 0.0f;
    *r = sgd ? *mg : (good ? adam : 0.0f);
}

/* Sums are kept per lane (coordinate i in lane i mod LANES) and added in lane order: no reassociation, so the
 * loops vectorise without fast-math, and every run gives the same sums. */
#define LANES 16

/* Grafted stage 1: the moment updates, in place, and the norms' sums in float32 (out: Σ(m·q)², Σr², max q, max
 * |m|). Unmasked: where every m and v is finite the masks of terms() change nothing, and a non-finite m or v
 * (v is clamped, so only NaN) makes a sum NaN or inf, which the caller's check rejects; then, as when a sum may
 * have overflowed or underflowed, it redoes them in double and masked from the stored moments (norms_span). */
INLINE void moments_span(const Span* s, int64_t b, int64_t end, const int e, const int negative, const int sgd,
                         double* out) {
    LOCALS(s);
    const float inv_sqrt_bc2 = s->inv_sqrt_bc2, adam_eps = s->adam_eps;
    float d_sq[LANES] = {0}, r_sq[LANES] = {0}, k[LANES] = {0}, m_max[LANES] = {0};
    for (int64_t i0 = b; i0 < end; i0 += LANES) {
        const int width = end - i0 < LANES ? (int)(end - i0) : LANES;
        #pragma GCC ivdep
        for (int j = 0; j < width; ++j) {
            const int64_t i = i0 + j;
            MOMENTS(i, mi, vi);
            float x = clamp_max(vi);
            float q = graft_q(x, eps, e, negative, a);
            float mq = mi * q, r = sgd ? mi : mi / (sqrtf(x) * inv_sqrt_bc2 + adam_eps), am = fabsf(mi);
            d_sq[j] += mq * mq;
            r_sq[j] += r * r;
            if (negative) k[j] = q > k[j] ? q : k[j];
            m_max[j] = am > m_max[j] ? am : m_max[j];
        }
    }
    out[0] = out[1] = out[2] = out[3] = 0;
    for (int j = 0; j < LANES; ++j) {
        out[0] += d_sq[j];
        out[1] += r_sq[j];
        out[2] = k[j] > out[2] ? k[j] : out[2];
        out[3] = m_max[j] > out[3] ? m_max[j] : out[3];
    }
}

/* The norms' sums in double from the stored (new) moments, reading only: out as moments_span's. */
INLINE void norms_span(const Span* s, int64_t b, int64_t end, const int e, const int negative, const int sgd,
                       double* out) {
    double d_sq[LANES] = {0}, r_sq[LANES] = {0};
    float k[LANES] = {0};
    for (int64_t i0 = b; i0 < end; i0 += LANES) {
        const int width = end - i0 < LANES ? (int)(end - i0) : LANES;
        #pragma GCC ivdep
        for (int j = 0; j < width; ++j) {
            float mg, qg, r;
            terms(s, s->m[i0 + j], s->v[i0 + j], e, negative, sgd, &mg, &qg, &r);
            double dd = (double)mg * (double)qg, rr = (double)r;  /* m·q in double: cannot overflow */
            d_sq[j] += dd * dd;
            r_sq[j] += rr * rr;
            k[j] = qg > k[j] ? qg : k[j];
        }
    }
    out[0] = out[1] = out[2] = 0;
    out[3] = 1.0;
    for (int j = 0; j < LANES; ++j) {
        out[0] += d_sq[j];
        out[1] += r_sq[j];
        out[2] = k[j] > out[2] ? k[j] : out[2];
    }
}

/* Grafted stage 2: θ ← θ·decay + alpha·m·q·inv_k from the moments stage 1 wrote. */
INLINE void apply_span(const Span* s, int64_t b, int64_t end, const int e, const int negative) {
    LOCALS(s);
    const float inv_k = s->inv_k;
    #pragma omp simd
    for (int64_t i = b; i < end; ++i) {
        float q = graft_q(clamp_max(v[i]), eps, e, negative, a);
        th[i] = th[i] * decay + alpha * (m[i] * (q * inv_k));
    }
}

/* One block of a tensor, its loop specialised on the exponent by the switch (e in −1..8, and the sign). */
#define EXPONENT_CASES(CALL) \
    CALL(-1) CALL(0) CALL(1) CALL(2) CALL(3) CALL(4) CALL(5) CALL(6) CALL(7) CALL(8)
#define RAW_CASE(E) case 2 * (E) + 2: raw_span(s, b, end, E, 0); break; \
                    case 2 * (E) + 3: raw_span(s, b, end, E, 1); break;
#define APPLY_CASE(E) case 2 * (E) + 2: apply_span(s, b, end, E, 0); break; \
                      case 2 * (E) + 3: apply_span(s, b, end, E, 1); break;
#define SUMS_CASE(f, E) \
    case 4 * (E) + 4: f(s, b, end, E, 0, 0, out); break; \
    case 4 * (E) + 5: f(s, b, end, E, 1, 0, out); break; \
    case 4 * (E) + 6: f(s, b, end, E, 0, 1, out); break; \
    case 4 * (E) + 7: f(s, b, end, E, 1, 1, out); break;
#define MOMENTS_CASE(E) SUMS_CASE(moments_span, E)
#define NORMS_CASE(E) SUMS_CASE(norms_span, E)

static void raw_block(const Span* s, int64_t b, int64_t end) {
    switch (2 * s->eighths + 2 + s->negative) { EXPONENT_CASES(RAW_CASE) }
}

static void apply_block(const Span* s, int64_t b, int64_t end) {
    switch (2 * s->eighths + 2 + s->negative) { EXPONENT_CASES(APPLY_CASE) }
}

static void moments_block(const Span* s, int64_t b, int64_t end, double* out) {
    switch (4 * s->eighths + 4 + s->negative + 2 * s->sgd) { EXPONENT_CASES(MOMENTS_CASE) }
}

static void norms_block(const Span* s, int64_t b, int64_t end, double* out) {
    switch (4 * s->eighths + 4 + s->negative + 2 * s->sgd) { EXPONENT_CASES(NORMS_CASE) }
}

static int64_t blocks_of(const Span* s) { return (s->n + BLOCK - 1) / BLOCK; }

/* ---- the step ---- */

static void raw_tensor(const Span* s, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (s->n >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks_of(s); ++blk)
        raw_block(s, blk * BLOCK, s->n < (blk + 1) * BLOCK ? s->n : (blk + 1) * BLOCK);
}

static void apply_tensor(const Span* s, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (s->n >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks_of(s); ++blk)
        apply_block(s, blk * BLOCK, s->n < (blk + 1) * BLOCK ? s->n : (blk + 1) * BLOCK);
}

/* One tensor's norms (_fused_kernels.GraftNorms: Σ(m·q)², Σr², k = max q for p < 0 (else 1), max |m|): its
 * blocks' sums (4 per block, into part) added in block order. */
static void graft_sums(const Span* s, int threads, double* part, double* out,
                       void (*block)(const Span*, int64_t, int64_t, double*)) {
    const int64_t blocks = blocks_of(s);
    #pragma omp parallel for schedule(static) num_threads(threads) if (s->n >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks; ++blk)
        block(s, blk * BLOCK, s->n < (blk + 1) * BLOCK ? s->n : (blk + 1) * BLOCK, part + 4 * blk);
    out[0] = out[1] = out[2] = out[3] = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const double* p = part + 4 * blk;
        out[0] += p[0];
        out[1] += p[1];
        out[2] = p[2] > out[2] ? p[2] : out[2];
        out[3] = p[3] > out[3] ? p[3] : out[3];
    }
    if (s->eighths == 0 || !s->negative || s->n == 0) out[2] = 1.0;
}

/* _fused.plain_sums_ok for one tensor: float32 sums are trusted when finite and not so small that squares may
 * have underflowed (a zero m, whose sums are exactly 0, is trusted too). */
static int plain_sums_ok(const double* sums, double low) {
    if (!isfinite(sums[0]) || !isfinite(sums[1])) return 0;
    return sums[3] == 0 || (sums[0] >= low && sums[1] >= low);
}

/* _single_tensor._graft_ratio: ‖r‖/(‖d‖·bc1), or 0 where either norm is zero or not finite. */
static double graft_ratio(double d_norm, double r_norm, double bc1) {
    int ok = isfinite(d_norm) && isfinite(r_norm) && d_norm > 0 && r_norm > 0;
    return ok ? r_norm / d_norm / bc1 : 0.0;
}

/* One NSF step over count tensors (see Step, TensorRef). Returns the number of tensors whose float32 sums were
 * redone in double, or −1, having changed nothing, when scratch memory could not be allocated. */
int64_t nsf_step(const Step* o, const TensorRef* tensors, int64_t count) {
    int64_t redone = 0;
    int64_t most = 1;
    for (int64_t t = 0; t < count; ++t) {
        int64_t blocks = (tensors[t].n + BLOCK - 1) / BLOCK;
        most = blocks > most ? blocks : most;
    }
    double* part = o->scale == 0 ? NULL : malloc(sizeof(double) * 4 * (size_t)most);
    if (o->scale != 0 && !part) return -1;
    for (int64_t t = 0; t < count; ++t) {
        const TensorRef* ref = &tensors[t];
        const double step = (double)*ref->step + 1;
        const double bc1 = 1 - pow(o->beta1, step), bc2 = 1 - pow(o->beta2, step), bc2_a = pow(bc2, o->a);
        Span s = {ref->th, ref->m, ref->v, ref->g, ref->n, 0, 0, 0, 0, 0, o->maximize ? -1.0f : 1.0f,
                  (float)o->decay, (float)(1 - o->beta1), (float)o->beta2, (float)(1 - o->beta2), (float)o->a,
                  o->eighths, o->negative, o->scale == 1};
        if (o->scale == 0) {  /* _fused._scalars: RawScalars */
            double alpha = o->negative ? -o->lr / (bc1 * bc2_a) : (o->eighths == 0 ? -o->lr / bc1
                                                                                    : -o->lr * bc2_a / bc1);
            s.alpha = (float)alpha;
            s.eps = (float)(!o->negative && o->eighths != 0 ? o->eps * bc2_a : 0.0);
            raw_tensor(&s, o->threads);
        } else {  /* GraftScalars, stage 1, the ratio (GraftFactors), stage 2 */
            s.eps = (float)(!o->negative && o->eighths != 0 ? o->eps * bc2_a : 0.0);
            s.inv_sqrt_bc2 = (float)(1 / sqrt(bc2));
            s.adam_eps = (float)o->eps;
            double sums[4];
            graft_sums(&s, o->threads, part, sums, moments_block);
            if (!plain_sums_ok(sums, o->low)) {  /* redone in double from the moments just written */
                graft_sums(&s, o->threads, part, sums, norms_block);
                ++redone;
            }
            const double k = sums[2];
            s.alpha = (float)(-o->lr * graft_ratio(sqrt(sums[0]) / k, sqrt(sums[1]), bc1));
            s.inv_k = (float)(k > 0 ? 1 / k : 0.0);
            apply_tensor(&s, o->threads);
        }
        *ref->step = (float)step;
    }
    free(part);
    return redone;
}
