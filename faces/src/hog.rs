//! dlib's HOG frontal face detector, with its hot loops widened to AVX-512.
//!
//! Per image, nearly all of the detector's time goes to dlib's header-only loops: the
//! HOG feature extraction (`impl_extract_fhog_features`, every pixel of every pyramid
//! level), `float_spatially_filter_image_separable` (31 HOG planes × 5 filters × every
//! level) and the bilinear `resize_image` behind `pyramid_down<6>` (each level) and
//! `pyramid_up` (face_recognition's upsampling, `dlib_shim::pyramid_up`). dlib computes
//! 4 or 8 pixels or columns per step (SSE registers on a baseline x86-64 build); here
//! they compute 16 per step on CPUs with AVX-512 (F, BW, DQ, VBMI; [`HogKernels`]).
//! Every output value gets exactly the operations dlib gives it, in the same order:
//! - lanes of one step never mix, and each lane does one IEEE float operation where dlib's
//!   lane does (integer work is exact; the resize's float x steps, the same for every
//!   row, are worked out once per image as dlib's four lanes step them);
//! - whatever dlib leaves to a scalar tail (with its own formula) gets that formula,
//!   as masked lanes or as dlib's own code;
//! - the gradient votes go into the histogram bins one pixel at a time in dlib's pixel
//!   order, so every bin adds the same floats in the same order;
//! - the C++ is compiled with `-ffp-contract=off`, so nothing is fused into FMAs.
//!
//! So pixels, features, scores, and therefore boxes, are bit-identical to dlib's; the
//! tests compare each kernel with dlib's bit for bit. The rest of the detection
//! (thresholds, non-maximum suppression) is `object_detector::operator()` and
//! `scan_fhog_pyramid::detect` as dlib 19.24 writes them.

use dlib_face_recognition::{FaceLocations, ImageMatrix, Rectangle};

cpp::cpp! {{
    #include "hog.hpp"
}}

cpp::cpp_class!(unsafe struct FrontalFaceDetector as "dlib::frontal_face_detector");

/// Which kernels the detector runs; the boxes are the same with either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HogKernels {
    /// dlib's own, 8 pixels or columns a step.
    Dlib,
    /// 16 a step (AVX-512 F, BW, DQ and VBMI); only on CPUs that have them.
    Avx512,
}

impl HogKernels {
    /// The widest this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
        {
            return HogKernels::Avx512;
        }
        HogKernels::Dlib
    }
}

/// dlib's `get_frontal_face_detector()`, run as dlib's `operator()` does.
pub struct HogDetector {
    detector: FrontalFaceDetector,
    kernels: HogKernels,
}

impl Default for HogDetector {
    fn default() -> Self {
        Self::new(HogKernels::Avx512)
    }
}

impl HogDetector {
    /// The detector, with `kernels` if this CPU has them (dlib's own otherwise).
    pub fn new(kernels: HogKernels) -> Self {
        let kernels = match kernels {
            HogKernels::Avx512 => HogKernels::best(),
            HogKernels::Dlib => HogKernels::Dlib,
        };
        // SAFETY: builds dlib's detector from the model compiled into dlib's headers and
        // returns it by value into the cpp_class of the same C++ type.
        let detector = unsafe {
            cpp::cpp!([] -> FrontalFaceDetector as "dlib::frontal_face_detector" {
                return dlib::get_frontal_face_detector();
            })
        };
        HogDetector { detector, kernels }
    }

    /// The kernels this detector runs.
    pub fn kernels(&self) -> HogKernels {
        self.kernels
    }

    /// Face rectangles in `image`, as `frontal_face_detector(image)` gives them.
    pub fn face_locations(&self, image: &ImageMatrix) -> Vec<Rectangle> {
        let wide = self.kernels == HogKernels::Avx512;
        let detector = &self.detector;
        // SAFETY: both pointers are to live C++ objects of the named types; the detector
        // is only read (`detect` takes it const, and builds its pyramid locally), and the
        // AVX-512 path is taken only when `HogKernels::best` saw the CPU has it.
        let found = unsafe {
            cpp::cpp!([wide as "bool", detector as "const dlib::frontal_face_detector*",
                       image as "const dlib::matrix<dlib::rgb_pixel>*"]
                    -> FaceLocations as "std::vector<dlib::rectangle>" {
                return rayish_hog::detect(wide, *detector, *image);
            })
        };
        found.to_vec()
    }
}

/// Runs dlib's separable filter and this module's on the same plane and filters, for
/// the tests: (dlib's output, ours), each `rows × cols` values.
#[cfg(test)]
fn filter_both(
    plane: &[f32],
    rows: usize,
    cols: usize,
    row_filter: &[f32],
    col_filter: &[f32],
    add_to: bool,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(plane.len(), rows * cols);
    let mut ours = vec![0f32; rows * cols];
    let mut theirs = vec![0f32; rows * cols];
    let (p, o, t) = (plane.as_ptr(), ours.as_mut_ptr(), theirs.as_mut_ptr());
    let (rf, nrf, cf, ncf) = (
        row_filter.as_ptr(),
        row_filter.len(),
        col_filter.as_ptr(),
        col_filter.len(),
    );
    let (nr, nc) = (rows as i64, cols as i64);
    // SAFETY: every pointer covers the length passed with it for the whole call; the C++
    // copies in, filters into its own images, and copies `rows × cols` floats out to each.
    unsafe {
        cpp::cpp!([p as "const float*", o as "float*", t as "float*", nr as "long", nc as "long",
                   rf as "const float*", nrf as "size_t", cf as "const float*", ncf as "size_t",
                   add_to as "bool"] {
            rayish_hog::filter_both(p, o, t, nr, nc, rf, nrf, cf, ncf, add_to);
        })
    }
    (theirs, ours)
}

/// Whether the AVX-512 HOG features of `image` (and of `image` one pyramid level down)
/// are bit-identical to dlib's, for the tests.
#[cfg(test)]
fn fhog_same(image: &ImageMatrix, cell_size: i32, rows_padding: i32, cols_padding: i32) -> bool {
    // SAFETY: `image` is a live dlib matrix, only read; the C++ builds its own outputs.
    unsafe {
        cpp::cpp!([image as "const dlib::matrix<dlib::rgb_pixel>*", cell_size as "int",
                   rows_padding as "int", cols_padding as "int"] -> bool as "bool" {
            return rayish_hog::fhog_same(*image, cell_size, rows_padding, cols_padding);
        })
    }
}

/// Whether the AVX-512 `pyramid_down<6>` of `image` (and of that result) is
/// pixel-identical to dlib's, for the tests.
#[cfg(test)]
fn pyramid_same(image: &ImageMatrix) -> bool {
    // SAFETY: `image` is a live dlib matrix, only read; the C++ builds its own outputs.
    unsafe {
        cpp::cpp!([image as "const dlib::matrix<dlib::rgb_pixel>*"] -> bool as "bool" {
            return rayish_hog::pyramid_same(*image);
        })
    }
}

/// Whether the AVX-512 `pyramid_up` of `image` (once and twice) is pixel-identical to
/// dlib's, for the tests.
#[cfg(test)]
fn pyramid_up_same(image: &ImageMatrix) -> bool {
    // SAFETY: `image` is a live dlib matrix, only read; the C++ builds its own outputs.
    unsafe {
        cpp::cpp!([image as "const dlib::matrix<dlib::rgb_pixel>*"] -> bool as "bool" {
            return rayish_hog::pyramid_up_same(*image);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs the AVX-512 kernels (saying so when not: then only dlib's
    /// code runs and there is nothing to compare).
    fn avx512_here() -> bool {
        let here = HogKernels::best() == HogKernels::Avx512;
        if !here {
            eprintln!("no AVX-512 F/BW/DQ/VBMI here: only dlib's code runs, nothing to compare");
        }
        here
    }

    /// A reproducible spread of values of both signs and many magnitudes.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let unit = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * [1e-3f32, 0.3, 7.0][(x & 3) as usize % 3]
            })
            .collect()
    }

    #[test]
    fn the_wide_filter_is_bit_identical_to_dlibs() {
        if !avx512_here() {
            return;
        }
        let mut seed = 1;
        // Widths around the 16-, 8- and scalar-step boundaries; filter lengths from 1
        // (no 3-way unroll) to 11 (unroll plus remainder), as the detector's (10) and more.
        for cols in [1usize, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 33, 47, 64, 81] {
            for rows in [1usize, 3, 10, 19] {
                for flen in [1usize, 2, 3, 4, 5, 10, 11] {
                    for add_to in [false, true] {
                        seed += 1;
                        let plane = values(rows * cols, seed);
                        let rf = values(flen, seed * 31);
                        let cf = values(flen.max(2) - 1, seed * 57);
                        let (theirs, ours) = filter_both(&plane, rows, cols, &rf, &cf, add_to);
                        let same = theirs
                            .iter()
                            .zip(&ours)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{rows}x{cols}, filter {flen}, add_to {add_to}: \
                             dlib {theirs:?}\nours {ours:?}"
                        );
                    }
                }
            }
        }
    }

    /// A `width × height` RGB image: noise, or (`blocky`) flat 5-pixel tiles with a few
    /// colour levels, so that zero gradients and channel ties come up often.
    fn synthetic(width: usize, height: usize, seed: u64, blocky: bool) -> ImageMatrix {
        let noise = values(width * height * 3, seed);
        let bytes: Vec<u8> = (0..width * height * 3)
            .map(|i| {
                let (px, ch) = (i / 3, i % 3);
                let (x, y) = (px % width, px / width);
                let n = if blocky {
                    noise[((y / 5) * width + x / 5) * 3 + ch] * 4.0
                } else {
                    noise[i]
                };
                ((n.abs() * 97.0) as u32 % 256) as u8
            })
            .collect();
        // SAFETY: `bytes` holds exactly width*height*3 bytes, which new() copies.
        unsafe { ImageMatrix::new(width, height, bytes.as_ptr()) }
    }

    #[test]
    fn wide_hog_features_are_bit_identical_to_dlibs_at_every_size() {
        if !avx512_here() {
            return;
        }
        let sizes = [
            1usize, 2, 7, 9, 16, 17, 23, 24, 25, 26, 33, 40, 41, 49, 57, 65, 100,
        ];
        let mut seed = 7;
        for &width in &sizes {
            for &height in &[3usize, 17, 26, 41] {
                for blocky in [false, true] {
                    seed += 1;
                    let image = synthetic(width, height, seed, blocky);
                    for (cell, rows_pad, cols_pad) in [(8, 10, 10), (8, 1, 1), (3, 2, 5), (2, 1, 1)]
                    {
                        assert!(
                            fhog_same(&image, cell, rows_pad, cols_pad),
                            "{width}x{height} blocky {blocky}, cell {cell}, \
                             padding {rows_pad}x{cols_pad}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn wide_hog_features_are_bit_identical_to_dlibs_on_the_samples() {
        if !avx512_here() {
            return;
        }
        for (name, image) in sample_images() {
            // The detector's own settings (8-pixel cells, a 10×10-cell window), and others.
            for (cell, rows_pad, cols_pad) in [(8, 10, 10), (8, 1, 1), (5, 3, 4)] {
                assert!(
                    fhog_same(&image, cell, rows_pad, cols_pad),
                    "{name}: cell {cell}, padding {rows_pad}x{cols_pad}"
                );
            }
        }
    }

    #[test]
    fn wide_pyramid_levels_are_pixel_identical_to_dlibs() {
        if !avx512_here() {
            return;
        }
        let mut seed = 99;
        for width in [
            1usize, 2, 3, 5, 6, 7, 11, 12, 19, 20, 21, 25, 37, 49, 50, 77, 98, 131,
        ] {
            for height in [1usize, 2, 6, 13, 40] {
                seed += 1;
                let image = synthetic(width, height, seed, seed % 2 == 0);
                assert!(pyramid_same(&image), "{width}x{height}");
            }
        }
        for (name, image) in sample_images() {
            assert!(pyramid_same(&image), "{name}");
        }
    }

    #[test]
    fn wide_upsampling_is_pixel_identical_to_dlibs() {
        if !avx512_here() {
            return;
        }
        let mut seed = 555;
        for width in [1usize, 2, 3, 4, 5, 8, 9, 15, 16, 17, 31, 33, 64, 101] {
            for height in [1usize, 2, 5, 12] {
                seed += 1;
                let image = synthetic(width, height, seed, seed % 2 == 1);
                assert!(pyramid_up_same(&image), "{width}x{height}");
            }
        }
        for (name, image) in sample_images() {
            assert!(pyramid_up_same(&image), "{name}");
        }
    }

    /// The sample photos as dlib images, upsampled once as the pipeline searches them.
    fn sample_images() -> Vec<(String, ImageMatrix)> {
        let dir = crate::models::data_dir().join("sample_photos");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("sample photos: run scripts/setup-faces.sh") {
            let path = entry.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("read photo");
            let rgb = crate::decode::decode_rgb(&bytes, u64::MAX).expect("decode photo");
            assert_eq!(rgb.data.len(), rgb.width as usize * rgb.height as usize * 3);
            // SAFETY: `data` holds exactly width*height*3 bytes (asserted above), which
            // ImageMatrix::new copies into a new dlib matrix.
            let image = unsafe {
                ImageMatrix::new(rgb.width as usize, rgb.height as usize, rgb.data.as_ptr())
            };
            let name = path.display().to_string();
            out.push((name, crate::dlib_shim::pyramid_up(&image, 1)));
        }
        assert!(
            out.len() >= 7,
            "expected the 7 sample photos in {}",
            dir.display()
        );
        out
    }

    fn tuples(rects: &[Rectangle]) -> Vec<(i64, i64, i64, i64)> {
        rects
            .iter()
            .map(|r| (r.left, r.top, r.right, r.bottom))
            .collect()
    }

    #[test]
    fn boxes_equal_dlibs_own_detector_with_either_filter() {
        use dlib_face_recognition::{FaceDetector, FaceDetectorTrait};
        let dlib = FaceDetector::new();
        let narrow = HogDetector::new(HogKernels::Dlib);
        let best = HogDetector::default();
        let mut faces = 0;
        for (name, image) in sample_images() {
            let want = tuples(&dlib.face_locations(&image));
            faces += want.len();
            assert_eq!(tuples(&narrow.face_locations(&image)), want, "{name}");
            assert_eq!(
                tuples(&best.face_locations(&image)),
                want,
                "{name} ({:?})",
                best.kernels()
            );
        }
        assert!(faces >= 7, "the samples hold faces; found {faces}");
    }
}
