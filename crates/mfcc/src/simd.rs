//! Runs the per-frame pass with the CPU's AVX2 instructions where it has them (4 lanes of f64 or 8 of f32
//! instead of SSE2's 2 or 4), chosen at run time so that one binary runs on every x86-64 CPU. The
//! arithmetic is the same either way (no fused multiply-add, no reordering), so both give bit-identical
//! results.
//!
//! This is the crate's only `unsafe`: calling a `#[target_feature]` function, sound once the feature has
//! been detected.
#![allow(unsafe_code)]

/// A computation to compile for the best available instruction set. `run` and everything it calls must be
/// `#[inline(always)]` to be compiled into the AVX2 build (a closure here was inlined or not at the
/// compiler's whim, and a pass that was not ran at SSE2 speed).
pub(crate) trait Pass {
    /// What the pass returns.
    type Output;
    /// Runs the pass.
    fn run(self) -> Self::Output;
}

/// The instruction set [`with_best_features`] runs on this CPU: `"avx2"` or `"baseline"` (x86-64's SSE2,
/// or the target's own baseline elsewhere).
#[must_use]
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return "avx2";
    }
    "baseline"
}

/// `pass.run()`, compiled for AVX2 when the CPU has it.
#[inline]
pub(crate) fn with_best_features<P: Pass>(pass: P) -> P::Output {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: `avx2` requires only that the CPU supports AVX2, which was detected just above.
        return unsafe { avx2(pass) };
    }
    pass.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<P: Pass>(pass: P) -> P::Output {
    pass.run()
}
