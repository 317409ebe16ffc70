// The C++ half of src/hog.rs (see its module docs): dlib's HOG frontal face detector
// as dlib 19.24's object_detector::operator() runs it, with the separable filter widened
// to 16 columns a step on AVX-512 CPUs, bit-identical to dlib's 8.
//
// Compiled (through src/hog.rs's cpp! block) with -ffp-contract=off: no FMA contraction.
#pragma once
#include <dlib/image_processing/frontal_face_detector.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>
#include <vector>

namespace rayish_hog {

using dlib::array2d;
using dlib::rectangle;
typedef dlib::matrix<float, 0, 1> filter_vector;

// 16 and 8 float lanes: the operations the filter's wide steps use, so that one template
// writes both step widths.
struct f32x16 {
    typedef __m512 type;
    __attribute__((target("avx512f"))) static type zero() { return _mm512_setzero_ps(); }
    __attribute__((target("avx512f"))) static type load(const float* p) { return _mm512_loadu_ps(p); }
    __attribute__((target("avx512f"))) static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
    __attribute__((target("avx512f"))) static type splat(float f) { return _mm512_set1_ps(f); }
    __attribute__((target("avx512f"))) static type add(type a, type b) { return _mm512_add_ps(a, b); }
    __attribute__((target("avx512f"))) static type mul(type a, type b) { return _mm512_mul_ps(a, b); }
};

struct f32x8 {
    typedef __m256 type;
    __attribute__((target("avx"))) static type zero() { return _mm256_setzero_ps(); }
    __attribute__((target("avx"))) static type load(const float* p) { return _mm256_loadu_ps(p); }
    __attribute__((target("avx"))) static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
    __attribute__((target("avx"))) static type splat(float f) { return _mm256_set1_ps(f); }
    __attribute__((target("avx"))) static type add(type a, type b) { return _mm256_add_ps(a, b); }
    __attribute__((target("avx"))) static type mul(type a, type b) { return _mm256_mul_ps(a, b); }
};

// One step of dlib's SIMD filter loop, as many columns as V has lanes: the taps at
// `taps[n]` (n-th element `stride` floats apart from `first`), summed as dlib sums them
// (three running sums over taps n, n+1, n+2, the remainder into the first, then
// t + (t2 + t3)), plus what `out` held when `add_to`.
template <typename V>
__attribute__((target("avx512f")))
inline void filter_step(const float* first, long stride, const float* taps, long count, float* out, bool add_to)
{
    typename V::type t = V::zero(), t2 = V::zero(), t3 = V::zero();
    long n = 0;
    for (; n < count - 2; n += 3) {
        t = V::add(t, V::mul(V::load(first + n * stride), V::splat(taps[n])));
        t2 = V::add(t2, V::mul(V::load(first + (n + 1) * stride), V::splat(taps[n + 1])));
        t3 = V::add(t3, V::mul(V::load(first + (n + 2) * stride), V::splat(taps[n + 2])));
    }
    for (; n < count; ++n)
        t = V::add(t, V::mul(V::load(first + n * stride), V::splat(taps[n])));
    t = V::add(t, V::add(t2, t3));
    if (add_to)
        t = V::add(t, V::load(out));
    V::store(out, t);
}

// Row pass then column pass of dlib::float_spatially_filter_image_separable: 16
// columns at a time, then 8, then the last few columns, which dlib sums one at a time
// with a single running sum, as masked lanes with that single running sum. Every lane
// does dlib's arithmetic for its column, in dlib's order.
__attribute__((target("avx512f")))
rectangle filter_separable_avx512(
    const array2d<float>& in, array2d<float>& out, const filter_vector& row_filter,
    const filter_vector& col_filter, array2d<float>& scratch, bool add_to)
{
    if (in.size() == 0) {
        out.clear();
        return rectangle();
    }
    out.set_size(in.nr(), in.nc());
    const long nr = in.nr();
    const long nc = in.nc();
    const long rows = row_filter.size();
    const long cols = col_filter.size();
    const long first_row = cols / 2;
    const long first_col = rows / 2;
    const long last_row = nr - ((cols - 1) / 2);
    const long last_col = nc - ((rows - 1) / 2);
    const rectangle non_border(first_col, first_row, last_col - 1, last_row - 1);
    if (!add_to)
        dlib::zero_border_pixels(out, non_border);
    scratch.set_size(nr, nc);
    const float* rf = &row_filter(0);
    const float* cf = &col_filter(0);

    for (long r = 0; r < nr; ++r) {
        const float* src = &in[r][0];
        float* dst = &scratch[r][0];
        long c = first_col;
        for (; c < last_col - 15; c += 16)
            filter_step<f32x16>(src + (c - first_col), 1, rf, rows, dst + c, false);
        for (; c < last_col - 7; c += 8)
            filter_step<f32x8>(src + (c - first_col), 1, rf, rows, dst + c, false);
        if (c < last_col) {
            // dlib's scalar tail (under 8 columns): one running sum per column, taps in
            // order; here one masked lane per column doing exactly that.
            const __mmask16 mask = (__mmask16)((1u << (last_col - c)) - 1);
            __m512 t = _mm512_setzero_ps();
            for (long n = 0; n < rows; ++n)
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, src + (c - first_col) + n), _mm512_set1_ps(rf[n])));
            _mm512_mask_storeu_ps(dst + c, mask, t);
        }
    }

    for (long r = first_row; r < last_row; ++r) {
        float* dst = &out[r][0];
        const float* top = &scratch[r - first_row][0];
        long c = first_col;
        for (; c < last_col - 15; c += 16)
            filter_step<f32x16>(top + c, nc, cf, cols, dst + c, add_to);
        for (; c < last_col - 7; c += 8)
            filter_step<f32x8>(top + c, nc, cf, cols, dst + c, add_to);
        if (c < last_col) {
            const __mmask16 mask = (__mmask16)((1u << (last_col - c)) - 1);
            __m512 t = _mm512_setzero_ps();
            for (long m = 0; m < cols; ++m)
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, top + m * nc + c), _mm512_set1_ps(cf[m])));
            if (add_to)
                t = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst + c), t);
            _mm512_mask_storeu_ps(dst + c, mask, t);
        }
    }
    return non_border;
}

inline rectangle filter_separable(
    bool wide, const array2d<float>& in, array2d<float>& out, const filter_vector& row_filter,
    const filter_vector& col_filter, array2d<float>& scratch, bool add_to)
{
    if (wide)
        return filter_separable_avx512(in, out, row_filter, col_filter, scratch, add_to);
    return dlib::float_spatially_filter_image_separable(in, out, row_filter, col_filter, scratch, add_to);
}

// ---- HOG features -------------------------------------------------------------------
//
// dlib::impl_fhog::impl_extract_fhog_features (cell_size > 1, planar output) for RGB
// images, with its 8-pixels-a-step gradient loop done 16 pixels a step. The loop's
// arithmetic is all exact integer work or single IEEE float operations per lane, so each
// lane computes what dlib's lane computes; the votes are then added into the histogram
// bins one pixel at a time, in dlib's pixel order, so every bin sums the same floats in
// the same order. The columns dlib leaves to its scalar tail (a different formula, and a
// different tie-break between colour channels) get that formula, as masked lanes; all
// after the histograms is dlib's code.

// Histogram layout: (cells_nr + 2) rows × (cells_nc + 2) cells × 18 orientations.
struct fhog_hist {
    std::vector<float> bins;
    long nc = 0;
    float& operator()(long r, long c, long o) { return bins[(r * nc + c) * 18 + o]; }
    float operator()(long r, long c, long o) const { return bins[(r * nc + c) * 18 + o]; }
};

// dlib's nine orientation unit vectors, rounded to float from the same double literals.
inline void fhog_directions(dlib::matrix<float, 2, 1> (&directions)[9])
{
    directions[0] = 1.0000, 0.0000;
    directions[1] = 0.9397, 0.3420;
    directions[2] = 0.7660, 0.6428;
    directions[3] = 0.500, 0.8660;
    directions[4] = 0.1736, 0.9848;
    directions[5] = -0.1736, 0.9848;
    directions[6] = -0.5000, 0.8660;
    directions[7] = -0.7660, 0.6428;
    directions[8] = -0.9397, 0.3420;
}

struct rgb_lanes {
    __m512i r, g, b;
};

// Loaded RGB bytes as one int32 lane per pixel and channel: `order` moves byte i of
// each channel's 16 to lane i of that channel's 16-byte quarter.
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
inline rgb_lanes channel_lanes(__m512i loaded, __m512i order)
{
    const __m512i planar = _mm512_permutexvar_epi8(order, loaded);
    return {_mm512_cvtepu8_epi32(_mm512_castsi512_si128(planar)),
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(planar, 1)),
        _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(planar, 2))};
}

// Up to 16 consecutive RGB pixels (the bytes `bytes` selects) as one int32 lane per
// pixel and channel.
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
inline rgb_lanes load_rgb_lanes(const unsigned char* p, __mmask64 bytes, __m512i deinterleave)
{
    return channel_lanes(_mm512_maskz_loadu_epi8(bytes, p), deinterleave);
}

// One step's gradients (get_gradient): per pixel, the colour channel with the longest
// gradient. dlib's 8-wide code gives ties to the later channel, its scalar code to the
// earlier one (`scalar_ties`).
struct gradient_lanes {
    __m512 x, y;
    __m512i len;
};

__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
inline gradient_lanes strongest_gradient(const unsigned char* above, const unsigned char* here,
    const unsigned char* below, int x, __mmask64 bytes, __m512i deinterleave, bool scalar_ties)
{
    const rgb_lanes left = load_rgb_lanes(here + 3 * (x - 1), bytes, deinterleave);
    const rgb_lanes right = load_rgb_lanes(here + 3 * (x + 1), bytes, deinterleave);
    const rgb_lanes top = load_rgb_lanes(above + 3 * x, bytes, deinterleave);
    const rgb_lanes bottom = load_rgb_lanes(below + 3 * x, bytes, deinterleave);
    const __m512i gxr = _mm512_sub_epi32(right.r, left.r), gyr = _mm512_sub_epi32(bottom.r, top.r);
    const __m512i gxg = _mm512_sub_epi32(right.g, left.g), gyg = _mm512_sub_epi32(bottom.g, top.g);
    const __m512i gxb = _mm512_sub_epi32(right.b, left.b), gyb = _mm512_sub_epi32(bottom.b, top.b);
    const __m512i rlen = _mm512_add_epi32(_mm512_mullo_epi32(gxr, gxr), _mm512_mullo_epi32(gyr, gyr));
    const __m512i glen = _mm512_add_epi32(_mm512_mullo_epi32(gxg, gxg), _mm512_mullo_epi32(gyg, gyg));
    const __m512i blen = _mm512_add_epi32(_mm512_mullo_epi32(gxb, gxb), _mm512_mullo_epi32(gyb, gyb));
    // Lanes where green wins over red, then where blue wins over that.
    __mmask16 take = scalar_ties ? _mm512_cmpgt_epi32_mask(glen, rlen) : ~_mm512_cmpgt_epi32_mask(rlen, glen);
    const __m512i tgx = _mm512_mask_blend_epi32(take, gxr, gxg);
    const __m512i tgy = _mm512_mask_blend_epi32(take, gyr, gyg);
    const __m512i tlen = _mm512_mask_blend_epi32(take, rlen, glen);
    take = scalar_ties ? _mm512_cmpgt_epi32_mask(blen, tlen) : ~_mm512_cmpgt_epi32_mask(tlen, blen);
    return {_mm512_cvtepi32_ps(_mm512_mask_blend_epi32(take, tgx, gxb)),
        _mm512_cvtepi32_ps(_mm512_mask_blend_epi32(take, tgy, gyb)),
        _mm512_mask_blend_epi32(take, tlen, blen)};
}

// The gradient snapped to one of 18 orientations, as both of dlib's loops do it (the
// scalar `else if (-dot > best_dot)` picks what the 8-wide second comparison picks).
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
inline __m512i nearest_orientation(const gradient_lanes& g, const float (&dir_x)[9], const float (&dir_y)[9])
{
    __m512 best_dot = _mm512_setzero_ps();
    __m512 best = _mm512_setzero_ps();
#pragma GCC unroll 9
    for (int o = 0; o < 9; o++) {
        __m512 dot = _mm512_add_ps(_mm512_mul_ps(g.x, _mm512_set1_ps(dir_x[o])),
            _mm512_mul_ps(g.y, _mm512_set1_ps(dir_y[o])));
        __mmask16 gt = _mm512_cmp_ps_mask(dot, best_dot, _CMP_GT_OQ);
        best_dot = _mm512_mask_blend_ps(gt, best_dot, dot);
        dot = _mm512_mul_ps(dot, _mm512_set1_ps(-1.0f));
        best = _mm512_mask_blend_ps(gt, best, _mm512_set1_ps((float)o));
        gt = _mm512_cmp_ps_mask(dot, best_dot, _CMP_GT_OQ);
        best_dot = _mm512_mask_blend_ps(gt, best_dot, dot);
        best = _mm512_mask_blend_ps(gt, best, _mm512_set1_ps((float)(o + 9)));
    }
    return _mm512_cvttps_epi32(best);
}

// The first loop of impl_extract_fhog_features: every visible pixel's gradient votes
// into `hist` (zeroed by the caller).
template <typename image_type>
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
void fhog_histograms_avx512(const image_type& img_, fhog_hist& hist, int cell_size,
    int visible_nr, int visible_nc)
{
    dlib::const_image_view<image_type> img(img_);
    dlib::matrix<float, 2, 1> directions[9];
    fhog_directions(directions);
    float dir_x[9], dir_y[9];
    for (int o = 0; o < 9; ++o) {
        dir_x[o] = directions[o](0);
        dir_y[o] = directions[o](1);
    }
    // Byte i of each channel's 16 goes to lane i of its 16-byte quarter.
    alignas(64) unsigned char order[64] = {};
    for (int i = 0; i < 16; ++i)
        for (int ch = 0; ch < 3; ++ch)
            order[ch * 16 + i] = (unsigned char)(3 * i + ch);
    const __m512i deinterleave = _mm512_load_si512(order);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    alignas(64) int best_o[16], ixp[16];
    alignas(64) float v11[16], v01[16], v10[16], v00[16];
    const long row_floats = hist.nc * 18;
    // Adds lane i's four votes around cell (upper row, column ixp[i]); lanes in order.
    const auto vote = [&](float* upper, unsigned lanes) {
        float* lower = upper + row_floats;
        while (lanes != 0) {
            const int i = __builtin_ctz(lanes);
            lanes &= lanes - 1;
            float* a = upper + ixp[i] * 18 + best_o[i];
            float* b = lower + ixp[i] * 18 + best_o[i];
            a[0] += v11[i];
            b[0] += v01[i];
            a[18] += v10[i];
            b[18] += v00[i];
        }
    };

    for (int y = 1; y < visible_nr; y++) {
        // As dlib computes them (double arithmetic, then float).
        const float yp = ((float)y + 0.5) / (float)cell_size - 0.5;
        const int iyp = (int)std::floor(yp);
        const float vy0 = yp - iyp;
        const float vy1 = 1.0 - vy0;
        const unsigned char* above = (const unsigned char*)&img[y - 1][0];
        const unsigned char* here = (const unsigned char*)&img[y][0];
        const unsigned char* below = (const unsigned char*)&img[y + 1][0];
        int x = 1;
        // dlib's 8-pixel steps cover x < visible_nc - 7; two of them at once while both fit.
        while (x < visible_nc - 7) {
            const int lanes = x < visible_nc - 15 ? 16 : 8;
            const gradient_lanes g = strongest_gradient(above, here, below, x,
                lanes == 16 ? 0xFFFFFFFFFFFFull : 0xFFFFFFull, deinterleave, false);
            // xp = (x + 0.5) / cell_size + 0.5 in float, one cell to the right of the
            // scalar formula's, hence no +1 below.
            const __m512 xx = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_set1_epi32(x), lane));
            const __m512 xp = _mm512_add_ps(_mm512_div_ps(_mm512_add_ps(xx, _mm512_set1_ps(0.5f)),
                                                _mm512_set1_ps((float)cell_size)),
                _mm512_set1_ps(0.5f));
            const __m512i ixp_v = _mm512_cvttps_epi32(xp);
            __m512 vx0 = _mm512_sub_ps(xp, _mm512_cvtepi32_ps(ixp_v));
            __m512 vx1 = _mm512_sub_ps(_mm512_set1_ps(1.0f), vx0);
            const __m512 v = _mm512_sqrt_ps(_mm512_cvtepi32_ps(g.len));
            _mm512_store_si512(best_o, nearest_orientation(g, dir_x, dir_y));
            vx1 = _mm512_mul_ps(vx1, v);
            vx0 = _mm512_mul_ps(vx0, v);
            _mm512_store_ps(v11, _mm512_mul_ps(_mm512_set1_ps(vy1), vx1));
            _mm512_store_ps(v01, _mm512_mul_ps(_mm512_set1_ps(vy0), vx1));
            _mm512_store_ps(v10, _mm512_mul_ps(_mm512_set1_ps(vy1), vx0));
            _mm512_store_ps(v00, _mm512_mul_ps(_mm512_set1_ps(vy0), vx0));
            _mm512_store_si512(ixp, ixp_v);
            // A zero-length gradient votes +0.0 into bins that hold +0.0 or more, which
            // changes nothing: those pixels are skipped.
            vote(&hist(iyp + 1, 0, 0),
                _mm512_cmpneq_epi32_mask(g.len, _mm512_setzero_si512()) & ((1u << lanes) - 1));
            x += lanes;
        }
        // dlib's scalar tail (under 8 pixels), one masked lane per pixel doing its
        // arithmetic: xp in double, floor, and the votes as (vy * vx) * v.
        if (x < visible_nc) {
            const int lanes = visible_nc - x;
            const gradient_lanes g = strongest_gradient(above, here, below, x,
                (1ull << (3 * lanes)) - 1, deinterleave, true);
            const __m512d xd = _mm512_cvtepi32_pd(_mm512_castsi512_si256(
                _mm512_add_epi32(_mm512_set1_epi32(x), lane)));
            const __m256 xp8 = _mm512_cvtpd_ps(_mm512_sub_pd(
                _mm512_div_pd(_mm512_add_pd(xd, _mm512_set1_pd(0.5)), _mm512_set1_pd((double)cell_size)),
                _mm512_set1_pd(0.5)));
            const __m512 xp = _mm512_castps256_ps512(xp8);
            const __m512 xfloor = _mm512_roundscale_ps(xp, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            const __m512i ixp_v = _mm512_add_epi32(_mm512_cvttps_epi32(xfloor), _mm512_set1_epi32(1));
            const __m512 vx0 = _mm512_sub_ps(xp, xfloor);
            const __m512 vx1 = _mm512_sub_ps(_mm512_set1_ps(1.0f), vx0);
            const __m512 v = _mm512_sqrt_ps(_mm512_cvtepi32_ps(g.len));
            _mm512_store_si512(best_o, nearest_orientation(g, dir_x, dir_y));
            _mm512_store_ps(v11, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(vy1), vx1), v));
            _mm512_store_ps(v01, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(vy0), vx1), v));
            _mm512_store_ps(v10, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(vy1), vx0), v));
            _mm512_store_ps(v00, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(vy0), vx0), v));
            _mm512_store_si512(ixp, ixp_v);
            vote(&hist(iyp + 1, 0, 0),
                _mm512_cmpneq_epi32_mask(g.len, _mm512_setzero_si512()) & ((1u << lanes) - 1));
        }
    }
}

// The rest of impl_extract_fhog_features after its histograms, verbatim (block energies,
// then the 31 features of each cell), compiled for the baseline target as dlib's is.
inline void fhog_features(const fhog_hist& hist, int cells_nr, int cells_nc,
    dlib::array<array2d<float>>& hog, int hog_nr, int hog_nc, int filter_rows_padding,
    int filter_cols_padding)
{
    using dlib::simd4f;
    using dlib::impl_fhog::set_hog;
    array2d<float> norm(cells_nr, cells_nc);
    dlib::assign_all_pixels(norm, 0);
    const int padding_rows_offset = (filter_rows_padding - 1) / 2;
    const int padding_cols_offset = (filter_cols_padding - 1) / 2;
    for (int r = 0; r < cells_nr; ++r)
        for (int c = 0; c < cells_nc; ++c)
            for (int o = 0; o < 9; o++)
                norm[r][c] += (hist(r + 1, c + 1, o) + hist(r + 1, c + 1, o + 9))
                    * (hist(r + 1, c + 1, o) + hist(r + 1, c + 1, o + 9));

    const float eps = 0.0001;
    for (int y = 0; y < hog_nr; y++) {
        const int yy = y + padding_rows_offset;
        for (int x = 0; x < hog_nc; x++) {
            const simd4f z1(norm[y + 1][x + 1], norm[y][x + 1], norm[y + 1][x], norm[y][x]);
            const simd4f z2(norm[y + 1][x + 2], norm[y][x + 2], norm[y + 1][x + 1], norm[y][x + 1]);
            const simd4f z3(norm[y + 2][x + 1], norm[y + 1][x + 1], norm[y + 2][x], norm[y + 1][x]);
            const simd4f z4(norm[y + 2][x + 2], norm[y + 1][x + 2], norm[y + 2][x + 1], norm[y + 1][x + 1]);
            const simd4f nn = 0.2 * sqrt(z1 + z2 + z3 + z4 + eps);
            const simd4f n = 0.1 / nn;
            simd4f t = 0;
            const int xx = x + padding_cols_offset;
            for (int o = 0; o < 18; o += 3) {
                simd4f temp0(hist(y + 1 + 1, x + 1 + 1, o));
                simd4f temp1(hist(y + 1 + 1, x + 1 + 1, o + 1));
                simd4f temp2(hist(y + 1 + 1, x + 1 + 1, o + 2));
                simd4f h0 = min(temp0, nn) * n;
                simd4f h1 = min(temp1, nn) * n;
                simd4f h2 = min(temp2, nn) * n;
                set_hog(hog, o, xx, yy, sum(h0));
                set_hog(hog, o + 1, xx, yy, sum(h1));
                set_hog(hog, o + 2, xx, yy, sum(h2));
                t += h0 + h1 + h2;
            }
            t *= 2 * 0.2357;
            for (int o = 0; o < 9; o += 3) {
                simd4f temp0 = hist(y + 1 + 1, x + 1 + 1, o) + hist(y + 1 + 1, x + 1 + 1, o + 9);
                simd4f temp1 = hist(y + 1 + 1, x + 1 + 1, o + 1) + hist(y + 1 + 1, x + 1 + 1, o + 9 + 1);
                simd4f temp2 = hist(y + 1 + 1, x + 1 + 1, o + 2) + hist(y + 1 + 1, x + 1 + 1, o + 9 + 2);
                simd4f h0 = min(temp0, nn) * n;
                simd4f h1 = min(temp1, nn) * n;
                simd4f h2 = min(temp2, nn) * n;
                set_hog(hog, o + 18, xx, yy, sum(h0));
                set_hog(hog, o + 18 + 1, xx, yy, sum(h1));
                set_hog(hog, o + 18 + 2, xx, yy, sum(h2));
            }
            float temp[4];
            t.store(temp);
            set_hog(hog, 27, xx, yy, temp[0]);
            set_hog(hog, 28, xx, yy, temp[1]);
            set_hog(hog, 29, xx, yy, temp[2]);
            set_hog(hog, 30, xx, yy, temp[3]);
        }
    }
}

// dlib::extract_fhog_features(img, hog, cell_size, padding...) into planar `hog`; the
// histograms with AVX-512 when `wide`.
template <typename image_type>
void extract_fhog(bool wide, const image_type& img_, dlib::array<array2d<float>>& hog,
    int cell_size, int filter_rows_padding, int filter_cols_padding)
{
    if (!wide || cell_size == 1) {
        dlib::extract_fhog_features(img_, hog, cell_size, filter_rows_padding, filter_cols_padding);
        return;
    }
    dlib::const_image_view<image_type> img(img_);
    const int cells_nr = (int)((float)img.nr() / (float)cell_size + 0.5);
    const int cells_nc = (int)((float)img.nc() / (float)cell_size + 0.5);
    const int hog_nr = std::max(cells_nr - 2, 0);
    const int hog_nc = std::max(cells_nc - 2, 0);
    if (hog_nr == 0 || hog_nc == 0) {
        // dlib clears the features, then extract_fhog_features gives back 31 empty planes.
        hog.clear();
        hog.resize(31);
        return;
    }
    fhog_hist hist;
    hist.nc = cells_nc + 2;
    hist.bins.assign((size_t)(cells_nr + 2) * hist.nc * 18, 0.0f);
    dlib::impl_fhog::init_hog(hog, hog_nr, hog_nc, filter_rows_padding, filter_cols_padding);
    const int visible_nr = std::min((long)cells_nr * cell_size, img.nr()) - 1;
    const int visible_nc = std::min((long)cells_nc * cell_size, img.nc()) - 1;
    fhog_histograms_avx512(img_, hist, cell_size, visible_nr, visible_nc);
    fhog_features(hist, cells_nr, cells_nc, hog, hog_nr, hog_nc, filter_rows_padding,
        filter_cols_padding);
}

// ---- Pyramid ------------------------------------------------------------------------
//
// dlib::pyramid_down<6> on RGB images is resize_image's bilinear SIMD-4 loop: x steps
// along each row in float, four columns at a time, and each channel of each output
// pixel is ((tlf*tl + trf*tr) + blf*bl) + brf*br, truncated. The x steps are the same
// for every row, so they are worked out once; then each row does 16 columns a step,
// every lane the same float operations as dlib's, and dlib's scalar tail verbatim.

// 16 (or fewer) output columns of dlib's SIMD part: where their source pixels are and
// their horizontal weights.
struct resize_block {
    long first = 0;      // first output column
    long lanes = 0;      // output columns in the block
    long base = 0;       // first source pixel any lane reads
    bool packed = false; // all source pixels within 64 bytes from `base`
    __mmask64 bytes = 0; // the source bytes to load when packed
    unsigned char left_idx[64] = {}, right_idx[64] = {}; // per channel quarter, lane -> byte
    int left[16] = {};
    float lr[16] = {}, inv_lr[16] = {};
};

struct rgb_floats {
    __m512 r, g, b;
};

// The left (or, with `right`, right) source pixel of each lane of `block` in `row`.
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
inline rgb_floats source_pixels(const unsigned char* row, const resize_block& block, bool right)
{
    rgb_lanes c;
    if (block.packed) {
        c = channel_lanes(_mm512_maskz_loadu_epi8(block.bytes, row + 3 * block.base),
            _mm512_loadu_si512(right ? block.right_idx : block.left_idx));
    } else {
        alignas(64) int cr[16] = {}, cg[16] = {}, cb[16] = {};
        for (long i = 0; i < block.lanes; ++i) {
            const unsigned char* p = row + 3 * (block.left[i] + (right ? 1 : 0));
            cr[i] = p[0];
            cg[i] = p[1];
            cb[i] = p[2];
        }
        c = {_mm512_load_si512(cr), _mm512_load_si512(cg), _mm512_load_si512(cb)};
    }
    return {_mm512_cvtepi32_ps(c.r), _mm512_cvtepi32_ps(c.g), _mm512_cvtepi32_ps(c.b)};
}

// One channel of 16 output pixels: ((tlf*tl + trf*tr) + blf*bl) + brf*br, truncated to
// int, low byte (dlib's static_cast<unsigned char>).
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
inline __m128i bilinear(__m512 tlf, __m512 trf, __m512 blf, __m512 brf, __m512 tl, __m512 tr,
    __m512 bl, __m512 br)
{
    const __m512 sum = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(tlf, tl), _mm512_mul_ps(trf, tr)), _mm512_mul_ps(blf, bl)),
        _mm512_mul_ps(brf, br));
    return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(sum));
}

// dlib::resize_image(in, out) (bilinear) for RGB images, into `out` already sized.
template <typename in_image_type, typename out_image_type>
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512dq")))
void resize_rgb_avx512(const in_image_type& in_, out_image_type& out_)
{
    typedef dlib::rgb_pixel T;
    using dlib::pixel_to_vector;
    dlib::const_image_view<in_image_type> in_img(in_);
    dlib::image_view<out_image_type> out_img(out_);
    if (out_img.size() == 0 || in_img.size() == 0)
        return;
    const double x_scale = (in_img.nc() - 1) / (double)std::max<long>((out_img.nc() - 1), 1);
    const double y_scale = (in_img.nr() - 1) / (double)std::max<long>((out_img.nr() - 1), 1);

    // dlib's x: four float lanes from (float)(x + j*x_scale), x = -4*x_scale, each
    // stepped by (float)(4*x_scale) before use, until a right pixel falls off the row.
    std::vector<int> left;
    std::vector<float> lr, inv_lr;
    {
        const double x = -4 * x_scale;
        float xs[4] = {(float)x, (float)(x + x_scale), (float)(x + 2 * x_scale), (float)(x + 3 * x_scale)};
        const float step = (float)(4 * x_scale);
        for (;;) {
            int l[4];
            float f[4];
            for (int j = 0; j < 4; ++j) {
                xs[j] += step;
                l[j] = (int)xs[j];
                f[j] = xs[j] - (float)l[j];
            }
            if (l[3] + 1 >= in_img.nc())
                break;
            for (int j = 0; j < 4; ++j) {
                left.push_back(l[j]);
                lr.push_back(f[j]);
                inv_lr.push_back(1.0f - f[j]);
            }
        }
    }
    // dlib's loop stops only at the right edge of the source; should float rounding
    // carry it past the last output column, its extra lanes land at the start of the
    // next row (overwritten when that row is done) or past the image: stop there.
    const long simd_cols = std::min<long>((long)left.size(), out_img.nc());
    std::vector<resize_block> blocks;
    for (long first = 0; first < simd_cols; first += 16) {
        resize_block block;
        block.first = first;
        block.lanes = std::min<long>(16, simd_cols - first);
        block.base = left[first];
        const long span = 3 * (left[first + block.lanes - 1] + 2 - block.base);
        block.packed = span <= 64;
        block.bytes = span >= 64 ? ~0ull : (1ull << span) - 1;
        for (long i = 0; i < block.lanes; ++i) {
            block.left[i] = left[first + i];
            block.lr[i] = lr[first + i];
            block.inv_lr[i] = inv_lr[first + i];
            for (int ch = 0; ch < 3; ++ch) {
                block.left_idx[ch * 16 + i] = (unsigned char)(3 * (left[first + i] - block.base) + ch);
                block.right_idx[ch * 16 + i] = (unsigned char)(3 * (left[first + i] + 1 - block.base) + ch);
            }
        }
        blocks.push_back(block);
    }
    // Output byte 3j+ch comes from channel ch's quarter, lane j.
    alignas(64) unsigned char order[64] = {};
    for (int j = 0; j < 16; ++j)
        for (int ch = 0; ch < 3; ++ch)
            order[3 * j + ch] = (unsigned char)(ch * 16 + j);
    const __m512i interleave = _mm512_load_si512(order);

    double y = -y_scale;
    for (long r = 0; r < out_img.nr(); ++r) {
        y += y_scale;
        const long top = static_cast<long>(std::floor(y));
        const long bottom = std::min(top + 1, in_img.nr() - 1);
        const double tb_frac = y - top;
        const __m512 tb = _mm512_set1_ps((float)tb_frac);
        const __m512 inv_tb = _mm512_set1_ps((float)(1 - tb_frac));
        const unsigned char* top_row = (const unsigned char*)&in_img[top][0];
        const unsigned char* bottom_row = (const unsigned char*)&in_img[bottom][0];
        unsigned char* out_row = (unsigned char*)&out_img[r][0];
        for (const resize_block& block : blocks) {
            const __m512 lrv = _mm512_loadu_ps(block.lr);
            const __m512 inv_lrv = _mm512_loadu_ps(block.inv_lr);
            const __m512 tlf = _mm512_mul_ps(inv_tb, inv_lrv);
            const __m512 trf = _mm512_mul_ps(inv_tb, lrv);
            const __m512 blf = _mm512_mul_ps(tb, inv_lrv);
            const __m512 brf = _mm512_mul_ps(tb, lrv);
            const rgb_floats tl = source_pixels(top_row, block, false);
            const rgb_floats tr = source_pixels(top_row, block, true);
            const rgb_floats bl = source_pixels(bottom_row, block, false);
            const rgb_floats br = source_pixels(bottom_row, block, true);
            __m512i planar = _mm512_castsi128_si512(bilinear(tlf, trf, blf, brf, tl.r, tr.r, bl.r, br.r));
            planar = _mm512_inserti32x4(planar, bilinear(tlf, trf, blf, brf, tl.g, tr.g, bl.g, br.g), 1);
            planar = _mm512_inserti32x4(planar, bilinear(tlf, trf, blf, brf, tl.b, tr.b, bl.b, br.b), 2);
            const __mmask64 out_bytes = block.lanes == 16 ? 0xFFFFFFFFFFFFull : (1ull << (3 * block.lanes)) - 1;
            _mm512_mask_storeu_epi8(out_row + 3 * block.first, out_bytes,
                _mm512_permutexvar_epi8(interleave, planar));
        }
        // dlib's scalar tail, verbatim.
        long c = simd_cols;
        double x = -x_scale + c * x_scale;
        for (; c < out_img.nc(); ++c) {
            x += x_scale;
            const long left = static_cast<long>(std::floor(x));
            const long right = std::min(left + 1, in_img.nc() - 1);
            const double lr_frac = x - left;
            const T tl = in_img[top][left];
            const T tr = in_img[top][right];
            const T bl = in_img[bottom][left];
            const T br = in_img[bottom][right];
            T temp;
            dlib::assign_pixel(temp, 0);
            dlib::vector_to_pixel(temp,
                (1 - tb_frac) * ((1 - lr_frac) * pixel_to_vector<double>(tl) + lr_frac * pixel_to_vector<double>(tr))
                    + tb_frac * ((1 - lr_frac) * pixel_to_vector<double>(bl) + lr_frac * pixel_to_vector<double>(br)));
            dlib::assign_pixel(out_img[r][c], temp);
        }
    }
}

// dlib::pyramid_down<6>()(in, out) for RGB images; resized with AVX-512 when `wide`.
template <typename in_image_type>
void pyramid_down6(bool wide, const in_image_type& in, array2d<dlib::rgb_pixel>& out)
{
    if (!wide) {
        dlib::pyramid_down<6>()(in, out);
        return;
    }
    dlib::set_image_size(out, ((6 - 1) * dlib::num_rows(in)) / 6 + 0.5,
        ((6 - 1) * dlib::num_columns(in)) / 6 + 0.5);
    resize_rgb_avx512(in, out);
}

// dlib::pyramid_up(img, pyramid_down<2>) of an RGB matrix `levels` times (the
// upsampling face_recognition asks for before detecting); resized with AVX-512 when
// `wide`.
inline dlib::matrix<dlib::rgb_pixel> pyramid_up2(bool wide, const dlib::matrix<dlib::rgb_pixel>& img,
    unsigned levels)
{
    dlib::pyramid_down<2> pyr;
    dlib::matrix<dlib::rgb_pixel> out = img;
    for (unsigned i = 0; i < levels; ++i) {
        if (!wide) {
            dlib::pyramid_up(out, pyr);
            continue;
        }
        // dlib::pyramid_up(in, out, pyr, interpolate_bilinear()), then swapped in.
        dlib::matrix<dlib::rgb_pixel> up;
        if (dlib::image_size(out) != 0) {
            const rectangle uprect = pyr.rect_up(dlib::get_rect(out));
            if (!uprect.is_empty()) {
                dlib::set_image_size(up, uprect.bottom() + 1, uprect.right() + 1);
                resize_rgb_avx512(out, up);
            }
        }
        dlib::swap(up, out);
    }
    return out;
}

// dlib::impl::create_fhog_pyramid<pyramid_down<6>> with extract_fhog for the extractor
// and pyramid_down6 for the pyramid.
template <typename image_type>
void create_fhog_pyramid(bool wide, const image_type& img,
    dlib::array<dlib::array<array2d<float>>>& feats, int cell_size, int filter_rows_padding,
    int filter_cols_padding, unsigned long min_pyramid_layer_width,
    unsigned long min_pyramid_layer_height, unsigned long max_pyramid_levels)
{
    unsigned long levels = 0;
    rectangle rect = dlib::get_rect(img);
    dlib::pyramid_down<6> pyr;
    do {
        rect = pyr.rect_down(rect);
        ++levels;
    } while (rect.width() >= min_pyramid_layer_width && rect.height() >= min_pyramid_layer_height
        && levels < max_pyramid_levels);
    if (feats.max_size() < levels)
        feats.set_max_size(levels);
    feats.set_size(levels);
    extract_fhog(wide, img, feats[0], cell_size, filter_rows_padding, filter_cols_padding);
    if (feats.size() > 1) {
        array2d<dlib::rgb_pixel> temp1, temp2;
        pyramid_down6(wide, img, temp1);
        extract_fhog(wide, temp1, feats[1], cell_size, filter_rows_padding, filter_cols_padding);
        swap(temp1, temp2);
        for (unsigned long i = 2; i < feats.size(); ++i) {
            pyramid_down6(wide, temp2, temp1);
            extract_fhog(wide, temp1, feats[i], cell_size, filter_rows_padding, filter_cols_padding);
            swap(temp1, temp2);
        }
    }
}

typedef dlib::scan_fhog_pyramid<dlib::pyramid_down<6>> scanner_type;
typedef scanner_type::fhog_filterbank filterbank;

// dlib::impl::apply_filters_to_fhog with the separable filter call swapped.
inline rectangle apply_filters(bool wide, const filterbank& w,
    const dlib::array<array2d<float>>& feats, array2d<float>& saliency)
{
    const unsigned long separable = w.num_separable_filters();
    if (separable > w.filters.size() * std::min(w.filters[0].nr(), w.filters[0].nc()) / 3.0)
        return dlib::impl::apply_filters_to_fhog(w, feats, saliency);
    rectangle area;
    saliency.clear();
    array2d<float> scratch;
    unsigned long i = 0;
    while (i < w.row_filters.size() && w.row_filters[i].size() == 0)
        ++i;
    for (; i < w.row_filters.size(); ++i)
        for (unsigned long j = 0; j < w.row_filters[i].size(); ++j)
            area = filter_separable(wide, feats[i], saliency, w.row_filters[i][j],
                w.col_filters[i][j], scratch, saliency.size() != 0);
    if (saliency.size() == 0) {
        saliency.set_size(feats[0].nr(), feats[0].nc());
        dlib::assign_all_pixels(saliency, 0);
    }
    return area;
}

// object_detector<scan_fhog_pyramid<pyramid_down<6>>>::operator()(img) of dlib 19.24
// (scanner.load, scanner.detect per weight vector, sort, non-max suppression).
inline std::vector<rectangle> detect(bool wide, const dlib::frontal_face_detector& det,
    const dlib::matrix<dlib::rgb_pixel>& img)
{
    const scanner_type& scanner = det.get_scanner();
    const unsigned long width = scanner.get_fhog_window_width();
    const unsigned long height = scanner.get_fhog_window_height();
    const int cell_size = scanner.get_cell_size();
    dlib::array<dlib::array<array2d<float>>> feats;
    create_fhog_pyramid(wide, img, feats, cell_size, height, width, scanner.get_min_pyramid_layer_width(),
        scanner.get_min_pyramid_layer_height(), scanner.get_max_pyramid_levels());
    const unsigned long box_width = width - 2 * scanner.get_padding();
    const unsigned long box_height = height - 2 * scanner.get_padding();
    dlib::pyramid_down<6> pyr;

    std::vector<dlib::rect_detection> accum;
    std::vector<std::pair<double, rectangle>> dets;
    array2d<float> saliency;
    for (unsigned long i = 0; i < det.num_detectors(); ++i) {
        const double thresh = det.get_processed_w(i).w(scanner.get_num_dimensions());
        const filterbank& w = det.get_processed_w(i).get_detect_argument();
        // impl::detect_from_fhog_pyramid
        dets.clear();
        for (unsigned long l = 0; l < feats.size(); ++l) {
            const rectangle area = apply_filters(wide, w, feats[l], saliency);
            for (long r = area.top(); r <= area.bottom(); ++r)
                for (long c = area.left(); c <= area.right(); ++c)
                    if (saliency[r][c] >= thresh) {
                        rectangle rect = scanner.get_feature_extractor().feats_to_image(
                            dlib::centered_rect(dlib::point(c, r), box_width, box_height),
                            cell_size, height, width);
                        rect = pyr.rect_up(rect, l);
                        dets.push_back(std::make_pair(saliency[r][c], rect));
                    }
        }
        std::sort(dets.rbegin(), dets.rend(), dlib::impl::compare_pair_rect);
        for (const auto& d : dets) {
            dlib::rect_detection temp;
            temp.detection_confidence = d.first - thresh;
            temp.weight_index = i;
            temp.rect = d.second;
            accum.push_back(temp);
        }
    }
    if (det.num_detectors() > 1)
        std::sort(accum.rbegin(), accum.rend());
    std::vector<rectangle> found;
    const dlib::test_box_overlap& overlaps = det.get_overlap_tester();
    for (const auto& d : accum) {
        bool suppressed = false;
        for (const auto& kept : found)
            if (overlaps(kept, d.rect)) {
                suppressed = true;
                break;
            }
        if (!suppressed)
            found.push_back(d.rect);
    }
    return found;
}

// For src/hog.rs's tests: filters the same nr×nc plane with the wide loop into `ours` and
// with dlib's into `theirs`; with add_to, both outputs start from the plane upside down.
inline void filter_both(const float* plane, float* ours, float* theirs, long nr, long nc,
    const float* rf, size_t nrf, const float* cf, size_t ncf, bool add_to)
{
    array2d<float> in(nr, nc), a(nr, nc), b(nr, nc), scratch;
    for (long r = 0; r < nr; ++r)
        for (long c = 0; c < nc; ++c) {
            in[r][c] = plane[r * nc + c];
            a[r][c] = b[r][c] = plane[(nr - 1 - r) * nc + c];
        }
    filter_vector row(nrf), col(ncf);
    for (size_t i = 0; i < nrf; ++i) row(i) = rf[i];
    for (size_t i = 0; i < ncf; ++i) col(i) = cf[i];
    filter_separable(true, in, a, row, col, scratch, add_to);
    filter_separable(false, in, b, row, col, scratch, add_to);
    for (long r = 0; r < nr; ++r)
        for (long c = 0; c < nc; ++c) {
            ours[r * nc + c] = a[r][c];
            theirs[r * nc + c] = b[r][c];
        }
}

// For src/hog.rs's tests: true if extract_fhog gives bit-identical planes with and
// without AVX-512 for `img`, and for `img` one pyramid level down (an array2d, as every
// level after the first is).
inline bool fhog_same(const dlib::matrix<dlib::rgb_pixel>& img, int cell_size,
    int filter_rows_padding, int filter_cols_padding)
{
    const auto same = [&](const auto& image) {
        dlib::array<array2d<float>> ours, theirs;
        extract_fhog(true, image, ours, cell_size, filter_rows_padding, filter_cols_padding);
        extract_fhog(false, image, theirs, cell_size, filter_rows_padding, filter_cols_padding);
        if (ours.size() != theirs.size())
            return false;
        for (size_t i = 0; i < ours.size(); ++i) {
            if (ours[i].nr() != theirs[i].nr() || ours[i].nc() != theirs[i].nc())
                return false;
            for (long r = 0; r < ours[i].nr(); ++r)
                if (std::memcmp(&ours[i][r][0], &theirs[i][r][0], sizeof(float) * ours[i].nc()) != 0)
                    return false;
        }
        return true;
    };
    array2d<dlib::rgb_pixel> down;
    dlib::pyramid_down<6>()(img, down);
    return same(img) && same(down);
}

// For src/hog.rs's tests: true if pyramid_up2 gives the same pixels with and without
// AVX-512, once and twice.
inline bool pyramid_up_same(const dlib::matrix<dlib::rgb_pixel>& img)
{
    for (unsigned levels = 1; levels <= 2; ++levels) {
        const dlib::matrix<dlib::rgb_pixel> ours = pyramid_up2(true, img, levels);
        const dlib::matrix<dlib::rgb_pixel> theirs = pyramid_up2(false, img, levels);
        if (ours.nr() != theirs.nr() || ours.nc() != theirs.nc())
            return false;
        if (ours.size() != 0 && std::memcmp(&ours(0, 0), &theirs(0, 0), 3 * ours.size()) != 0)
            return false;
    }
    return true;
}

// For src/hog.rs's tests: true if pyramid_down6 gives the same pixels with and without
// AVX-512, from `img` (a matrix, as the first level is) and from that result (an array2d,
// as every later level is).
inline bool pyramid_same(const dlib::matrix<dlib::rgb_pixel>& img)
{
    const auto same = [](const array2d<dlib::rgb_pixel>& a, const array2d<dlib::rgb_pixel>& b) {
        if (a.nr() != b.nr() || a.nc() != b.nc())
            return false;
        for (long r = 0; r < a.nr(); ++r)
            if (std::memcmp(&a[r][0], &b[r][0], 3 * a.nc()) != 0)
                return false;
        return true;
    };
    array2d<dlib::rgb_pixel> ours, theirs, ours2, theirs2;
    pyramid_down6(true, img, ours);
    pyramid_down6(false, img, theirs);
    if (!same(ours, theirs))
        return false;
    pyramid_down6(true, theirs, ours2);
    pyramid_down6(false, theirs, theirs2);
    return same(ours2, theirs2);
}

} // namespace rayish_hog
