//! The few dlib calls `dlib-face-recognition` does not wrap, written the same way it
//! writes its own (the `cpp` crate): upsampling as dlib's Python binding does it,
//! mapping rectangles back, rebuilding a landmark set from plain points.

use dlib_face_recognition::{FaceLandmarks, ImageMatrix, Rectangle};
use std::os::raw::c_long;

cpp::cpp! {{
    #include <dlib/image_transforms.h>
    #include <dlib/image_processing/full_object_detection.h>
    #include <dlib/matrix.h>
    #include <dlib/pixel.h>
    #include "hog.hpp"
}}

/// `levels` times `pyramid_up` with a `pyramid_down<2>`, exactly as
/// `dlib.fhog_object_detector.__call__(img, upsample_num_times)` and
/// `dlib.cnn_face_detection_model_v1.__call__` do before detecting; its bilinear resize
/// 16 columns a step on AVX-512 CPUs, pixel-identical (see `hog.rs`).
pub fn pyramid_up(image: &ImageMatrix, levels: u32) -> ImageMatrix {
    let wide = crate::hog::HogKernels::best() == crate::hog::HogKernels::Avx512;
    // SAFETY: `image` is a live `dlib::matrix<rgb_pixel>` (ImageMatrix is declared as that
    // class by dlib-face-recognition); the C++ block only reads it and returns a new matrix
    // by value, which becomes an owned ImageMatrix. The AVX-512 path runs only when
    // `HogKernels::best` saw the CPU has it.
    unsafe {
        cpp::cpp!([image as "const dlib::matrix<dlib::rgb_pixel>*", levels as "uint32_t",
                   wide as "bool"]
                -> ImageMatrix as "dlib::matrix<dlib::rgb_pixel>" {
            return rayish_hog::pyramid_up2(wide, *image, levels);
        })
    }
}

/// Maps a rectangle found on an image upsampled `levels` times back to the original
/// image: `pyramid_down<2>::rect_down(rect, levels)`, as dlib's Python binding does.
pub fn rect_down(rect: Rectangle, levels: u32) -> Rectangle {
    let (l, t, r, b) = (rect.left, rect.top, rect.right, rect.bottom);
    let mut out = [0 as c_long; 4];
    let out_ptr = out.as_mut_ptr();
    // SAFETY: plain integers in, four longs written to `out`, which outlives the call.
    unsafe {
        cpp::cpp!([l as "long", t as "long", r as "long", b as "long", levels as "uint32_t",
                   out_ptr as "long*"] {
            dlib::pyramid_down<2> pyr;
            dlib::rectangle rect = pyr.rect_down(dlib::rectangle(l, t, r, b), levels);
            out_ptr[0] = rect.left();
            out_ptr[1] = rect.top();
            out_ptr[2] = rect.right();
            out_ptr[3] = rect.bottom();
        })
    }
    Rectangle {
        left: out[0],
        top: out[1],
        right: out[2],
        bottom: out[3],
    }
}

/// Rebuilds dlib's `full_object_detection` from a rectangle and its landmark points, so
/// that landmarks can travel between stages (and nodes) as plain data.
pub fn landmarks_from_points(rect: Rectangle, points: &[[i64; 2]]) -> FaceLandmarks {
    let (l, t, r, b) = (rect.left, rect.top, rect.right, rect.bottom);
    let flat: Vec<c_long> = points
        .iter()
        .flat_map(|p| [p[0] as c_long, p[1] as c_long])
        .collect();
    let ptr = flat.as_ptr();
    let n = points.len();
    // SAFETY: `ptr` points at `2 * n` longs owned by `flat`, alive for the whole call; the
    // C++ block copies them into a new full_object_detection returned by value.
    unsafe {
        cpp::cpp!([l as "long", t as "long", r as "long", b as "long", ptr as "const long*",
                   n as "size_t"] -> FaceLandmarks as "dlib::full_object_detection" {
            std::vector<dlib::point> parts;
            parts.reserve(n);
            for (size_t i = 0; i < n; ++i) {
                parts.push_back(dlib::point(ptr[2 * i], ptr[2 * i + 1]));
            }
            return dlib::full_object_detection(dlib::rectangle(l, t, r, b), parts);
        })
    }
}
