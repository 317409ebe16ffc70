//! Compiles the C++ side of `src/dlib_shim.rs` (the `cpp!` blocks) against the system
//! dlib headers; linking dlib, BLAS and LAPACK is done by `dlib-face-recognition`.
fn main() {
    println!("cargo:rerun-if-changed=src/dlib_shim.rs");
    cpp_build::Config::new()
        .flag("-std=c++14")
        .flag("-O2")
        .build("src/lib.rs");
}
