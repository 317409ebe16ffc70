//! OpenBLAS, which multiplies dlib's encoder matrices: one thread per process, and
//! kernels that fit the CPU.
//!
//! OpenBLAS picks its kernels once, when it is loaded, from the CPU's model number
//! (or from `OPENBLAS_CORETYPE`). A release older than the CPU does not know its model
//! and falls back to the Prescott (SSE3) kernels: Debian 12's 0.3.21 does so on Intel
//! Emerald Rapids (family 6, model 0xCF), where the encoder then spends about a third
//! of each image in `sgemm_kernel_PRESCOTT`. [`use_native_kernels`] notices that
//! fallback and restarts the process with the kernels the CPU's features allow.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
    fn openblas_get_corename() -> *const c_char;
}

/// The variable OpenBLAS reads when it is loaded to choose its kernels.
pub const CORETYPE_VAR: &str = "OPENBLAS_CORETYPE";

/// One BLAS thread: each pipeline task holds one CPU of the node, and a multi-threaded
/// OpenBLAS inside it would take the others' cores behind the scheduler's back.
pub fn single_threaded() {
    // SAFETY: OpenBLAS's documented setter; it takes a plain int and may be called at any
    // time from any thread.
    unsafe { openblas_set_num_threads(1) }
}

/// The name of the kernel set OpenBLAS chose for this process ("Prescott", "SkylakeX"…).
pub fn core_name() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string (never freed);
    // a null pointer is checked for all the same.
    unsafe {
        let name = openblas_get_corename();
        if name.is_null() {
            return String::new();
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// What this CPU can run, as far as OpenBLAS's kernel sets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 and FMA: the Haswell kernels.
    pub avx2_fma: bool,
    /// AVX-512 F, CD, BW, DQ and VL: the SkylakeX kernels.
    pub avx512: bool,
}

impl CpuFeatures {
    /// This machine's features.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            CpuFeatures {
                avx2_fma: has!("avx2") && has!("fma"),
                avx512: has!("avx512f")
                    && has!("avx512cd")
                    && has!("avx512bw")
                    && has!("avx512dq")
                    && has!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures {
            avx2_fma: false,
            avx512: false,
        }
    }
}

/// The kernel set to ask for instead of `picked`, if any. Only OpenBLAS's fallback for
/// a CPU model it does not know (Prescott) is overridden; any other choice, including a
/// deliberately older one (OpenBLAS picks Sandybridge or Nehalem when the OS does not
/// save AVX registers, and then so must we), is OpenBLAS's own and is kept.
pub fn better_core(picked: &str, cpu: CpuFeatures) -> Option<&'static str> {
    if !picked.eq_ignore_ascii_case("prescott") {
        return None;
    }
    if cpu.avx512 {
        Some("SkylakeX")
    } else if cpu.avx2_fma {
        Some("Haswell")
    } else {
        None
    }
}

/// Call first thing in `main`, before `rayish::serve_if_worker`: if OpenBLAS fell back
/// to its Prescott kernels on a CPU with AVX2 or AVX-512 and `OPENBLAS_CORETYPE` is not
/// set, replaces this process (same pid, arguments and open files) with a fresh start of
/// the same binary with `OPENBLAS_CORETYPE` set to the better kernels. Processes started
/// from it (nodes, workers) inherit the variable and start once. Returns `Ok` when no
/// restart is needed; an error only if the restart itself failed, in which case the
/// process goes on with the kernels it has (slower, same results to 1e-6).
pub fn use_native_kernels() -> std::io::Result<()> {
    if std::env::var_os(CORETYPE_VAR).is_some() {
        return Ok(());
    }
    let Some(core) = better_core(&core_name(), CpuFeatures::detect()) else {
        return Ok(());
    };
    restart_with(core)
}

#[cfg(unix)]
fn restart_with(core: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` only returns on failure.
    Err(cmd.args(args).env(CORETYPE_VAR, core).exec())
}

#[cfg(not(unix))]
fn restart_with(_core: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: CpuFeatures = CpuFeatures {
        avx2_fma: true,
        avx512: true,
    };
    const AVX2: CpuFeatures = CpuFeatures {
        avx2_fma: true,
        avx512: false,
    };
    const OLD: CpuFeatures = CpuFeatures {
        avx2_fma: false,
        avx512: false,
    };

    #[test]
    fn only_the_unknown_model_fallback_is_overridden() {
        assert_eq!(better_core("Prescott", ALL), Some("SkylakeX"));
        assert_eq!(better_core("PRESCOTT", AVX2), Some("Haswell"));
        assert_eq!(better_core("Prescott", OLD), None);
        for own_choice in ["SkylakeX", "Haswell", "Sandybridge", "Nehalem", "Zen", ""] {
            assert_eq!(better_core(own_choice, ALL), None, "{own_choice}");
        }
    }

    #[test]
    fn the_core_name_comes_from_the_loaded_library() {
        // Whatever it chose, OpenBLAS names it; an empty name would mean the symbol
        // answered nothing and `use_native_kernels` could never see the fallback.
        assert!(!core_name().is_empty());
    }
}
