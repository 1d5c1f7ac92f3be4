/* DLF's per-step weight search on CPU, one row at a time in one call: the same certificates, widening order and
   results as the eager torch search in modelops/decode/dlf.py (whose docstring has the math), without its memory
   passes and dispatch. Built and loaded by modelops/decode/native.py.

   Written with GCC/Clang vector extensions so that every loop is SIMD whatever the optimiser decides; no
   -ffast-math: the rounding trick in vexp and the inf/NaN handling rely on IEEE semantics. */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Lanes per vector: one register of the target. Wider vectors are split by the compiler, but badly: 16 lanes on an
   AVX2 CPU (AMD EPYC) ran the search 4-6x slower than 8. */
#ifndef W
#if defined(__AVX512F__)
#define W 16
#elif defined(__AVX__)
#define W 8
#else
#define W 4 /* SSE2, NEON */
#endif
#endif
#define FLUSH (1024 / W) /* vectors summed in float (1024 values) before they are added to the double totals */
#define MAX_COMPS 8

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* W floats from p, or the n < W left, padded with -inf (e^{-inf} = 0 and a delta of two -inf counts as 0). */
static inline vf load(const float* p, long n) {
    vf x;
    if (n >= W) { memcpy(&x, p, sizeof x); return x; }
    float t[W];
    for (int i = 0; i < W; i++) t[i] = i < n ? p[i] : -INFINITY;
    memcpy(&x, t, sizeof x);
    return x;
}

/* e^x for x <= 0, as every caller shifts by a maximum or a bound on it (a rounding error above 0 is harmless;
   x < -87 gives 0): Cody-Waite reduction and the degree-7 polynomial of Cephes' expf. */
static inline vf vexp_neg(vf x) {
    vf c = pick(x < -87.f, splat(-87.f), x);
    vf n = (c * 1.44269504088896341f + 12582912.f) - 12582912.f; /* round to nearest */
    vf r = c - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vf y = p * r * r + r + 1.0f;
    vi scale = (__builtin_convertvector(n, vi) + 127) << 23;
    return pick(x < -87.f, splat(0.f), y * (vf)scale);
}

static inline vf clean(vf d) { return pick(d - d == 0.f, d, splat(0.f)); } /* inf and NaN -> 0 */

static inline double hsum(vf x) {
    double s = 0.0;
    for (int i = 0; i < W; i++) s += x[i];
    return s;
}

static inline float hmax(vf x) {
    float m = x[0];
    for (int i = 1; i < W; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* The largest of z[0..n); *bad set when a value is NaN or +inf. */
static float row_max(const float* z, long n, int* bad) {
    vf m = splat(-INFINITY);
    vi flag = {0};
    for (long v = 0; v < n; v += W) {
        vf x = load(z + v, n - v);
        m = pick(x > m, x, m);
        flag |= ~(x < INFINITY);
    }
    for (int i = 0; i < W; i++) *bad |= flag[i] != 0;
    return hmax(m);
}

/* ---- the search of one row (the same certificates and order as modelops/decode/dlf.py; see its docstring) ---- */

/* |α|·(max d − min d) up to this: a tilt is shifted by a bound on its max, found without a pass (its largest term is
   then at least e^-20, and terms lost to underflow are below e^-67 of it); beyond, by its exact max (one more pass). */
#define BOUND_SPAN 20.0f

typedef struct {
    const float *l, *s, *e; /* the row's large, small-base and this direction's expert logits */
    long V;
    int T;
    float top_l, dmin, dmax; /* max z_L; range of the expert's delta */
    double lse_l, mean;      /* log Σ e^{z_L}; E_P[d] */
    const double *fwd, *bwd; /* the T targets KL(Q_t‖Q), KL(Q‖Q_t) */
    double fb, gb;           /* their means */
} Row;

/* Moments of one row: tops[k] = max z_k (0 if all -inf), sums[k][j] = Σ e^{z_k − top_k}·[1, d…, d²…][j],
   d_t = z_{2+t} − z_1 (inf/NaN counted as 0), and each delta's range. Returns 1 for a NaN/+inf logit. */
static inline __attribute__((always_inline)) int row_moments_k(const float* const* z, const float* const* next, int K,
                                                               long V, double* tops, double* sums, float* dmin,
                                                               float* dmax) {
    int T = K - 2, J = 1 + 2 * T, bad = 0;
    vf top[MAX_COMPS], lo[MAX_COMPS], hi[MAX_COMPS], acc[MAX_COMPS * (2 * MAX_COMPS - 3)];
    for (int k = 0; k < K; k++) {
        float m = row_max(z[k], V, &bad);
        m = m == -INFINITY ? 0.f : m;
        tops[k] = m;
        top[k] = splat(m);
    }
    for (int t = 0; t < T; t++) lo[t] = splat(0.f), hi[t] = splat(0.f);
    for (int j = 0; j < K * J; j++) sums[j] = 0.0;
    for (long v0 = 0; v0 < V; v0 += FLUSH * W) {
        for (int j = 0; j < K * J; j++) acc[j] = splat(0.f);
        long end = v0 + FLUSH * W < V ? v0 + FLUSH * W : V;
        for (long v = v0; v < end; v += W) {
            vf d[MAX_COMPS - 2], base = load(z[1] + v, V - v);
            for (int t = 0; t < T; t++) {
                d[t] = clean(load(z[2 + t] + v, V - v) - base);
                lo[t] = pick(d[t] < lo[t], d[t], lo[t]);
                hi[t] = pick(d[t] > hi[t], d[t], hi[t]);
            }
            for (int k = 0; k < K; k++) {
                if (next) __builtin_prefetch(next[k] + v, 0, 1); /* the next row, while this one is compute-bound */
                vf e = vexp_neg(load(z[k] + v, V - v) - top[k]);
                vf* a = acc + k * J;
                a[0] += e;
                for (int t = 0; t < T; t++) {
                    vf ed = e * d[t];
                    a[1 + t] += ed;
                    a[1 + T + t] += ed * d[t];
                }
            }
        }
        for (int j = 0; j < K * J; j++) sums[j] += hsum(acc[j]);
    }
    for (int t = 0; t < T; t++) {
        dmin[t] = -hmax(-lo[t]);
        dmax[t] = hmax(hi[t]);
    }
    return bad;
}

/* row_moments_k with K a constant: the compiler unrolls the loops over models and keeps the sums in registers */
static int row_moments(const float* const* z, const float* const* next, int K, long V, double* tops, double* sums,
                       float* dmin, float* dmax) {
    switch (K) {
    case 3: return row_moments_k(z, next, 3, V, tops, sums, dmin, dmax);
    case 4: return row_moments_k(z, next, 4, V, tops, sums, dmin, dmax);
    case 5: return row_moments_k(z, next, 5, V, tops, sums, dmin, dmax);
    default: return row_moments_k(z, next, K, V, tops, sums, dmin, dmax);
    }
}

/* Σ e^{x − shift}, Σ e^{x − shift}·d for x = z_L + α·d at np ≤ 2 points in one pass over the row. */
static void tilt_pass(const Row* r, const float* alpha, const float* shift, int np, double* sw, double* swd) {
    vf a0 = splat(alpha[0]), a1 = splat(alpha[np - 1]), m0 = splat(shift[0]), m1 = splat(shift[np - 1]);
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    long V = r->V;
    for (long v0 = 0; v0 < V; v0 += FLUSH * W) {
        vf s0 = splat(0.f), q0 = splat(0.f), s1 = splat(0.f), q1 = splat(0.f);
        long end = v0 + FLUSH * W < V ? v0 + FLUSH * W : V;
        for (long v = v0; v < end; v += W) {
            vf l = load(r->l + v, V - v), d = clean(load(r->e + v, V - v) - load(r->s + v, V - v));
            vf w = vexp_neg(l + a0 * d - m0);
            s0 += w;
            q0 += w * d;
            if (np > 1) {
                w = vexp_neg(l + a1 * d - m1);
                s1 += w;
                q1 += w * d;
            }
        }
        t[0] += hsum(s0), t[1] += hsum(q0), t[2] += hsum(s1), t[3] += hsum(q1);
    }
    for (int k = 0; k < np; k++) sw[k] = t[2 * k], swd[k] = t[2 * k + 1];
}

static float exact_shift(const Row* r, float alpha) {
    vf a = splat(alpha), m = splat(-INFINITY);
    for (long v = 0; v < r->V; v += W) {
        vf x = load(r->l + v, r->V - v) + a * clean(load(r->e + v, r->V - v) - load(r->s + v, r->V - v));
        m = pick(x > m, x, m);
    }
    float top = hmax(m);
    return top == -INFINITY ? 0.f : top;
}

/* (f, g) and the objective at np ≤ 2 points: f = KL(P̃‖P), g = KL(P‖P̃) from log E_P[e^{α d}] and E_P̃[d]. */
static void evaluate(const Row* r, const float* alpha, int np, double* f, double* g, double* obj) {
    float shift[2];
    double sw[2], swd[2];
    for (int k = 0; k < np; k++) {
        float up = alpha[k] * r->dmax, down = alpha[k] * r->dmin; /* z_L + α d ≤ top_l + max(up, down) */
        int exact = fabsf(alpha[k]) * (r->dmax - r->dmin) > BOUND_SPAN;
        shift[k] = exact ? exact_shift(r, alpha[k]) : r->top_l + (up > down ? up : down);
    }
    tilt_pass(r, alpha, shift, np, sw, swd);
    for (int k = 0; k < np; k++) {
        double a = alpha[k], log_ratio = log(sw[k]) + shift[k] - r->lse_l; /* log E_P[e^{α d}] */
        g[k] = log_ratio - a * r->mean;
        f[k] = a * (swd[k] / sw[k]) - log_ratio;
        double o = 0.0;
        for (int t = 0; t < r->T; t++) {
            double x = f[k] - r->fwd[t], y = g[k] - r->bwd[t];
            o += x * x + y * y;
        }
        obj[k] = o;
    }
}

/* Evaluate the listed grid indices (two per pass) of one direction. */
static void evaluate_indices(const Row* r, const int* idx, int count, const double* mags, float sign,
                             const int64_t* cols, double* f_at, double* g_at, char* seen, double* objective) {
    for (int i = 0; i < count; i += 2) {
        int np = count - i < 2 ? count - i : 2;
        float alpha[2];
        double f[2], g[2], obj[2];
        for (int k = 0; k < np; k++) alpha[k] = (float)(sign * mags[idx[i + k]]);
        evaluate(r, alpha, np, f, g, obj);
        for (int k = 0; k < np; k++) {
            int j = idx[i + k];
            f_at[j] = f[k], g_at[j] = g[k], seen[j] = 1;
            objective[cols[j]] = obj[k];
        }
    }
}

/* One direction: the two grid points around the second-order guess, then outward while a certificate fails, then
   every point between the last "below" and the first "above". */
static void search_direction(const Row* r, double var, const double* mags, const int64_t* cols, int n, float sign,
                             double* f_at, double* g_at, char* seen, int* idx, double* objective) {
    double num = r->fb + r->gb > 0.0 ? r->fb + r->gb : 0.0;
    double guess = var > 0.0 ? sqrt(num / var) : (num > 0.0 ? INFINITY : 0.0);
    if (isnan(guess)) guess = 0.0;
    int lo = -1;
    while (lo + 1 < n && mags[lo + 1] <= guess) lo++;
    int hi = lo + 1;
    memset(seen, 0, (size_t)n);
    for (;;) {
        int count = 0;
        if (lo >= 0 && !seen[lo]) idx[count++] = lo;
        if (hi < n && !seen[hi]) idx[count++] = hi;
        if (count) {
            evaluate_indices(r, idx, count, mags, sign, cols, f_at, g_at, seen, objective);
            continue;
        }
        if (lo >= 0 && !(f_at[lo] <= r->fb && g_at[lo] <= r->gb)) {
            lo--; /* not yet below both targets: a smaller |α| may be better */
            continue;
        }
        if (hi < n && !(f_at[hi] >= r->fb && g_at[hi] >= r->gb)) {
            hi++; /* not yet above both targets: a larger |α| may be better */
            continue;
        }
        break;
    }
    int count = 0;
    for (int j = lo + 1; j < hi; j++)
        if (!seen[j]) idx[count++] = j;
    evaluate_indices(r, idx, count, mags, sign, cols, f_at, g_at, seen, objective);
}

/* Candidates within TIE_RTOL·|min| + TIE_ATOL of a row's minimum tie, and the first wins (dlf.py's
   first_near_minimum, whose constants these equal); a NaN counts as the minimum, the first one wins. */
#define TIE_RTOL 1e-6
#define TIE_ATOL 1e-10
long dlf_first_near_min(const double* x, long n) { /* exported for the tests */
    long best = 0;
    for (long i = 0; i < n; i++) {
        if (isnan(x[i])) return i;
        if (x[i] < x[best]) best = i;
    }
    double limit = x[best] + TIE_RTOL * fabs(x[best]) + TIE_ATOL;
    for (long i = 0; i < best; i++)
        if (x[i] <= limit) return i;
    return best;
}

/* out = z_L + Σ_t w_t·d_t for one row (d_t as above), while the row is still in cache; a weight of 0 adds nothing. */
static void fuse_row(const float* const* z, int T, long V, const float* w, float* out) {
    const float* src = z[0];
    for (int t = 0; t < T; t++) {
        if (w[t] == 0.f) continue;
        vf wt = splat(w[t]);
        long v = 0;
        for (; v + W <= V; v += W) {
            vf x = load(src + v, W) + wt * clean(load(z[2 + t] + v, W) - load(z[1] + v, W));
            memcpy(out + v, &x, sizeof x);
        }
        for (; v < V; v++) {
            float d = z[2 + t][v] - z[1][v];
            out[v] = src[v] + w[t] * (d - d == 0.f ? d : 0.f);
        }
        src = out;
    }
    if (src == z[0]) memcpy(out, z[0], sizeof(float) * (size_t)V);
}

/* The whole search. comps: K = 2 + T float rows (large, base, experts…) with row strides ld. Directions d:
   expert dir_expert[d], sign dir_sign[d], magnitudes mags[dir_start[d] .. dir_start[d + 1]) (ascending) at candidate
   columns cols[…]. objective (rows, C), +inf on entry, receives every evaluated candidate's objective; choice (rows)
   the first near-minimum; fused (rows, V), unless NULL, z_L + cand[choice]·d with cand (C, T) the candidates' weights.
   Returns 0, or 1 for a NaN/+inf logit or an all -inf row (the caller then uses its own passes), 2 if K is too large. */
int dlf_search(const float* const* comps, const long* ld, int K, long rows, long V, int n_dirs, const int* dir_expert,
               const float* dir_sign, const int* dir_start, const double* mags, const int64_t* cols, int zero_col,
               long C, double* objective, const float* cand, int64_t* choice, float* fused) {
    if (K < 3 || K > MAX_COMPS) return 2;
    int T = K - 2, J = 1 + 2 * T, longest = 1;
    for (int d = 0; d < n_dirs; d++)
        longest = dir_start[d + 1] - dir_start[d] > longest ? dir_start[d + 1] - dir_start[d] : longest;
    double f_at[longest], g_at[longest];
    char seen[longest];
    int idx[longest + 2];
    for (long b = 0; b < rows; b++) {
        const float *z[MAX_COMPS], *next[MAX_COMPS];
        double tops[MAX_COMPS], sums[MAX_COMPS * (2 * MAX_COMPS - 3)], lse[MAX_COMPS], fwd[MAX_COMPS], bwd[MAX_COMPS];
        double mean[MAX_COMPS], var[MAX_COMPS];
        float dmin[MAX_COMPS], dmax[MAX_COMPS];
        for (int k = 0; k < K; k++) z[k] = comps[k] + b * ld[k], next[k] = z[k] + ld[k];
        if (row_moments(z, b + 1 < rows ? next : NULL, K, V, tops, sums, dmin, dmax)) return 1;
        for (int k = 0; k < K; k++) {
            if (!(sums[k * J] > 0.0)) return 1;
            lse[k] = log(sums[k * J]) + tops[k];
        }
        double fb = 0.0, gb = 0.0, zero = 0.0;
        for (int t = 0; t < T; t++) {
            double shift = lse[2 + t] - lse[1]; /* log Q_t − log Q = d_t − shift */
            fwd[t] = sums[(2 + t) * J + 1 + t] / sums[(2 + t) * J] - shift;
            bwd[t] = shift - sums[J + 1 + t] / sums[J];
            mean[t] = sums[1 + t] / sums[0];
            var[t] = sums[1 + T + t] / sums[0] - mean[t] * mean[t];
            var[t] = var[t] > 0.0 ? var[t] : 0.0;
            fb += fwd[t] / T, gb += bwd[t] / T;
            zero += fwd[t] * fwd[t] + bwd[t] * bwd[t];
        }
        double* obj = objective + b * C;
        if (zero_col >= 0) obj[zero_col] = zero; /* α = 0: P̃ = P, both KLs 0 */
        for (int d = 0; d < n_dirs; d++) {
            int t = dir_expert[d], start = dir_start[d];
            Row r = {z[0], z[1], z[2 + t], V, T, (float)tops[0], dmin[t], dmax[t], lse[0], mean[t], fwd, bwd, fb, gb};
            search_direction(&r, var[t], mags + start, cols + start, dir_start[d + 1] - start, dir_sign[d], f_at, g_at,
                             seen, idx, obj);
        }
        choice[b] = dlf_first_near_min(obj, C);
        if (fused) fuse_row(z, T, V, cand + choice[b] * T, fused + b * V);
    }
    return 0;
}
