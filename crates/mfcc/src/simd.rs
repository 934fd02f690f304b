//! Runs the per-frame pass with the CPU's AVX2 instructions where it has them (4 lanes of f64 instead of
//! SSE2's 2), chosen at run time so that one binary runs on every x86-64 CPU. The arithmetic is the same
//! either way (no fused multiply-add, no reordering), so both give bit-identical results.
//!
//! This is the crate's only `unsafe`: calling a `#[target_feature]` function, sound once the feature has
//! been detected.
#![allow(unsafe_code)]

/// `f()`, compiled for AVX2 when the CPU has it. `f` and what it calls must be inlined into it
/// (`#[inline]` or `#[inline(always)]`) to profit.
#[inline]
pub(crate) fn with_best_features<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: `avx2` requires only that the CPU supports AVX2, which was detected just above.
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
