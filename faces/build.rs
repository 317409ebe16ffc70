//! Compiles the C++ side of `src/dlib_shim.rs` and `src/hog.rs` (the `cpp!` blocks, and
//! `src/hog.hpp` they include) against the system
//! dlib headers; linking dlib, BLAS and LAPACK is done by `dlib-face-recognition`.
fn main() {
    println!("cargo:rerun-if-changed=src/dlib_shim.rs");
    println!("cargo:rerun-if-changed=src/hog.rs");
    println!("cargo:rerun-if-changed=src/hog.hpp");
    cpp_build::Config::new()
        .flag("-std=c++14")
        .include("src")
        .flag("-O2")
        // Keep a*b+c two roundings, as dlib computes it: src/hog.rs must match dlib's
        // scores bit for bit.
        .flag("-ffp-contract=off")
        // GCC 12 flags its own AVX-512 intrinsics (`_mm512_undefined_*`) as maybe
        // uninitialized when inlined (GCC bug 105593): a false positive on every use.
        .flag("-Wno-maybe-uninitialized")
        .build("src/lib.rs");
}
