// The C++ half of src/hog.rs (see its module docs): dlib's HOG frontal face detector
// as dlib 19.24's object_detector::operator() runs it, with the separable filter widened
// to 16 columns a step on AVX-512 CPUs, bit-identical to dlib's 8.
//
// Compiled (through src/hog.rs's cpp! block) with -ffp-contract=off: no FMA contraction.
#pragma once
#include <dlib/image_processing/frontal_face_detector.h>
#include <immintrin.h>
#include <algorithm>
#include <vector>

namespace rayish_hog {

using dlib::array2d;
using dlib::rectangle;
typedef dlib::matrix<float, 0, 1> filter_vector;

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
        for (; c < last_col - 15; c += 16) {
            __m512 t = _mm512_setzero_ps(), t2 = _mm512_setzero_ps(), t3 = _mm512_setzero_ps();
            long n = 0;
            for (; n < rows - 2; n += 3) {
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(src + (c - first_col) + n), _mm512_set1_ps(rf[n])));
                t2 = _mm512_add_ps(t2, _mm512_mul_ps(_mm512_loadu_ps(src + (c - first_col) + n + 1), _mm512_set1_ps(rf[n + 1])));
                t3 = _mm512_add_ps(t3, _mm512_mul_ps(_mm512_loadu_ps(src + (c - first_col) + n + 2), _mm512_set1_ps(rf[n + 2])));
            }
            for (; n < rows; ++n)
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(src + (c - first_col) + n), _mm512_set1_ps(rf[n])));
            t = _mm512_add_ps(t, _mm512_add_ps(t2, t3));
            _mm512_storeu_ps(dst + c, t);
        }
        for (; c < last_col - 7; c += 8) {
            __m256 t = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
            long n = 0;
            for (; n < rows - 2; n += 3) {
                t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_loadu_ps(src + (c - first_col) + n), _mm256_set1_ps(rf[n])));
                t2 = _mm256_add_ps(t2, _mm256_mul_ps(_mm256_loadu_ps(src + (c - first_col) + n + 1), _mm256_set1_ps(rf[n + 1])));
                t3 = _mm256_add_ps(t3, _mm256_mul_ps(_mm256_loadu_ps(src + (c - first_col) + n + 2), _mm256_set1_ps(rf[n + 2])));
            }
            for (; n < rows; ++n)
                t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_loadu_ps(src + (c - first_col) + n), _mm256_set1_ps(rf[n])));
            t = _mm256_add_ps(t, _mm256_add_ps(t2, t3));
            _mm256_storeu_ps(dst + c, t);
        }
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
        for (; c < last_col - 15; c += 16) {
            __m512 t = _mm512_setzero_ps(), t2 = _mm512_setzero_ps(), t3 = _mm512_setzero_ps();
            long m = 0;
            for (; m < cols - 2; m += 3) {
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(top + m * nc + c), _mm512_set1_ps(cf[m])));
                t2 = _mm512_add_ps(t2, _mm512_mul_ps(_mm512_loadu_ps(top + (m + 1) * nc + c), _mm512_set1_ps(cf[m + 1])));
                t3 = _mm512_add_ps(t3, _mm512_mul_ps(_mm512_loadu_ps(top + (m + 2) * nc + c), _mm512_set1_ps(cf[m + 2])));
            }
            for (; m < cols; ++m)
                t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(top + m * nc + c), _mm512_set1_ps(cf[m])));
            t = _mm512_add_ps(t, _mm512_add_ps(t2, t3));
            if (add_to)
                t = _mm512_add_ps(t, _mm512_loadu_ps(dst + c));
            _mm512_storeu_ps(dst + c, t);
        }
        for (; c < last_col - 7; c += 8) {
            __m256 t = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
            long m = 0;
            for (; m < cols - 2; m += 3) {
                t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_loadu_ps(top + m * nc + c), _mm256_set1_ps(cf[m])));
                t2 = _mm256_add_ps(t2, _mm256_mul_ps(_mm256_loadu_ps(top + (m + 1) * nc + c), _mm256_set1_ps(cf[m + 1])));
                t3 = _mm256_add_ps(t3, _mm256_mul_ps(_mm256_loadu_ps(top + (m + 2) * nc + c), _mm256_set1_ps(cf[m + 2])));
            }
            for (; m < cols; ++m)
                t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_loadu_ps(top + m * nc + c), _mm256_set1_ps(cf[m])));
            t = _mm256_add_ps(t, _mm256_add_ps(t2, t3));
            if (add_to)
                t = _mm256_add_ps(t, _mm256_loadu_ps(dst + c));
            _mm256_storeu_ps(dst + c, t);
        }
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
    dlib::impl::create_fhog_pyramid<dlib::pyramid_down<6>>(img, scanner.get_feature_extractor(),
        feats, cell_size, height, width, scanner.get_min_pyramid_layer_width(),
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

} // namespace rayish_hog
