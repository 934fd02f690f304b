//! The sample types the planner reads and the two precisions it computes in.

use rustfft::FftNum;
use rustfft::num_traits::Float as NumFloat;

/// A sample type the planner accepts.
pub trait Sample: Copy + Send + Sync {
    /// Zero (the value `center` pads the signal with).
    const ZERO: Self;
    /// The value as `f64`.
    fn to_f64(self) -> f64;
    /// The value rounded to `f32`.
    fn to_f32(self) -> f32;
}

impl Sample for f32 {
    const ZERO: Self = 0.0;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Sample for f64 {
    const ZERO: Self = 0.0;
    fn to_f64(self) -> f64 {
        self
    }
    #[allow(clippy::cast_possible_truncation)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A precision the planner computes in: `f64` (the default; matches librosa to 1e-4) or `f32`, the
/// precision librosa itself computes in for float32 input (STFT in complex64, mel, dB and DCT in float32).
pub trait Float: FftNum + NumFloat + Sample + Default + sealed::Sealed {
    /// `v` rounded to this precision.
    fn of(v: f64) -> Self;
    /// A sample in this precision.
    fn from_sample<T: Sample>(x: T) -> Self;
    /// `log10(x)` for finite `x ≥ 1e-30`, within a few ulps of the standard library's, in branch-free
    /// arithmetic the compiler vectorises (the libm call was a fifth of the MFCC time).
    fn log10_finite(self) -> Self;
}

impl Float for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn from_sample<T: Sample>(x: T) -> Self {
        x.to_f64()
    }
    /// `x = m·2^e` with `m` in [√½, √2), `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, `|s| ≤ 0.172`, summed
    /// to `s²³` (the next term is below 1e-18 relative).
    #[inline(always)]
    #[allow(clippy::cast_possible_wrap, clippy::cast_precision_loss)]
    fn log10_finite(self) -> Self {
        let bits = self.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
        let big = m > std::f64::consts::SQRT_2;
        let m = if big { m * 0.5 } else { m };
        let e = (exp + i64::from(big)) as f64;
        let s = (m - 1.0) / (m + 1.0);
        // p = Σ_{k<12} s2^k / (2k + 1), in Estrin's scheme: short dependency chains, so that neighbouring
        // values overlap in the pipeline.
        let c = |k: u32| 1.0 / f64::from(2 * k + 1);
        let s2 = s * s;
        let s4 = s2 * s2;
        let s8 = s4 * s4;
        let q = |k: u32| (c(k) + c(k + 1) * s2) + (c(k + 2) + c(k + 3) * s2) * s4;
        let p = q(0) + q(4) * s8 + q(8) * (s8 * s8);
        (e * std::f64::consts::LN_2 + 2.0 * s * p) * std::f64::consts::LOG10_E
    }
}

impl Float for f32 {
    #[allow(clippy::cast_possible_truncation)]
    fn of(v: f64) -> Self {
        v as f32
    }
    fn from_sample<T: Sample>(x: T) -> Self {
        x.to_f32()
    }
    /// As for `f64`, summed to `s⁹` (the next term is below 3e-9 relative).
    #[inline(always)]
    #[allow(clippy::cast_possible_wrap, clippy::cast_precision_loss)]
    fn log10_finite(self) -> Self {
        let bits = self.to_bits();
        let exp = ((bits >> 23) & 0xff) as i32 - 127;
        let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
        let big = m > std::f32::consts::SQRT_2;
        let m = if big { m * 0.5 } else { m };
        let e = (exp + i32::from(big)) as f32;
        let s = (m - 1.0) / (m + 1.0);
        let s2 = s * s;
        let s4 = s2 * s2;
        let p = (1.0 + s2 * (1.0 / 3.0)) + ((1.0 / 5.0) + s2 * (1.0 / 7.0)) * s4 + (1.0 / 9.0) * (s4 * s4);
        e * std::f32::consts::LOG10_2 + (2.0 * std::f32::consts::LOG10_E) * (s * p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log10_matches_the_standard_library(exp in -10.0f64..30.0, frac in 0.0f64..1.0) {
            let x = 10f64.powf(exp) * (1.0 + frac);
            let (a, b) = (x.log10_finite(), x.log10());
            prop_assert!((a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0), "{} vs {} at {}", a, b, x);
            let x = x as f32;
            let (a, b) = (x.log10_finite(), f64::from(x).log10());
            let tol = 4.0 * f64::from(f32::EPSILON) * b.abs().max(1.0);
            prop_assert!((f64::from(a) - b).abs() <= tol, "{} vs {} at {}", a, b, x);
        }
    }

    #[test]
    fn log10_at_powers_of_ten_and_around_one() {
        for k in -10..=30 {
            let x = 10f64.powi(k);
            assert!((x.log10_finite() - f64::from(k)).abs() < 1e-14, "{x}");
            let y = x as f32;
            assert!((f64::from(y.log10_finite()) - f64::from(y).log10()).abs() < 4e-6, "{y}");
        }
        for x in [1.0, 1.0 + 1e-12, 1.0 - 1e-12, std::f64::consts::SQRT_2, 0.707_2, 1.414_3, 1e-300] {
            assert!((x.log10_finite() - x.log10()).abs() < 4.0 * f64::EPSILON, "{x}");
        }
        for x in [1.0f32, 1.0 + f32::EPSILON, 1.0 - f32::EPSILON, std::f32::consts::SQRT_2, 0.707_2, 1e-10] {
            let want = f64::from(x).log10();
            let tol = 4.0 * f64::from(f32::EPSILON) * want.abs().max(1.0);
            assert!((f64::from(x.log10_finite()) - want).abs() <= tol, "{x}");
        }
    }
}
