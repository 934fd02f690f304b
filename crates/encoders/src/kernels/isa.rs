//! Which instruction set the CPU kernels' matrix products run on: chosen once from what the CPU has, or
//! forced (for measurements, and for the tests that check every path against the others).
//!
//! The choice is process-wide. Every matrix product of the CPU kernels (convolutions, linear layers,
//! attention) goes through [`super::matmul`], which reads it on each call.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set of the matrix product's micro-kernels (those of the `gemm` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code: one lane.
    Scalar,
    /// AVX2 with FMA (x86-64-v3): 8 f32 lanes.
    Avx2,
    /// AVX-512F (x86-64-v4): 16 f32 lanes.
    Avx512,
    /// NEON on aarch64: 4 f32 lanes (as `gemm` chooses it there).
    Neon,
}

/// An [`Isa`] this CPU cannot run, or a name that is none.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsaError {
    /// The CPU lacks the instructions.
    #[error("this CPU cannot run the `{0}` kernels (it can run: {1})")]
    Unsupported(&'static str, String),
    /// Not one of [`Isa::ALL`]'s names.
    #[error("unknown instruction set `{0}` (expected one of: scalar, avx2, avx512, neon)")]
    Unknown(String),
}

impl Isa {
    /// Every instruction set, from the narrowest.
    pub const ALL: [Self; 4] = [Self::Scalar, Self::Avx2, Self::Avx512, Self::Neon];

    /// Its name: `scalar`, `avx2`, `avx512` or `neon`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }

    /// Whether this CPU can run it.
    #[must_use]
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run, in the order of [`Isa::ALL`] (the narrowest first).
    #[must_use]
    pub fn supported() -> Vec<Self> {
        Self::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The default on this CPU: the widest it has. (AMD's Zen 4 runs 512-bit instructions as two 256-bit
    /// halves; it was once kept on AVX2, which trained faster there before the matrix products handed
    /// row-major destinations to the kernels transposed. Measured again on a Zen 4 since, AVX-512 trained
    /// at 0.97–1.22× and inferred at 1.02–1.29× the AVX2 path: `docs/benchmarks.md`.)
    #[must_use]
    pub fn detected() -> Self {
        if Self::Avx512.is_supported() {
            Self::Avx512
        } else if Self::Avx2.is_supported() {
            Self::Avx2
        } else if Self::Neon.is_supported() {
            Self::Neon
        } else {
            Self::Scalar
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| IsaError::Unknown(s.to_owned()))
    }
}

/// 0: not forced; otherwise 1 + the index in [`Isa::ALL`].
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The instruction set the matrix products run on now: the forced one, else [`Isa::detected`].
#[must_use]
pub fn isa() -> Isa {
    match FORCED.load(Ordering::Relaxed) {
        0 => detected_once(),
        i => Isa::ALL[usize::from(i - 1)],
    }
}

fn detected_once() -> Isa {
    static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(Isa::detected)
}

/// Forces the matrix products onto `isa` for the whole process (`None`: back to [`Isa::detected`]).
/// Products already running finish on the set they started with.
///
/// # Errors
/// [`IsaError::Unsupported`] when this CPU cannot run it; nothing changes then.
pub fn force_isa(isa: Option<Isa>) -> Result<(), IsaError> {
    let code = match isa {
        None => 0,
        Some(i) if !i.is_supported() => {
            let can: Vec<_> = Isa::supported().into_iter().map(Isa::name).collect();
            return Err(IsaError::Unsupported(i.name(), can.join(", ")));
        }
        Some(i) => {
            let index = Isa::ALL.iter().position(|a| *a == i).expect("every Isa is in ALL");
            u8::try_from(index + 1).expect("four instruction sets")
        }
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for i in Isa::ALL {
            assert_eq!(i.name().parse::<Isa>(), Ok(i));
        }
        assert!(matches!("avx1024".parse::<Isa>(), Err(IsaError::Unknown(_))));
    }

    #[test]
    fn the_default_is_supported_and_scalar_always_is() {
        assert!(Isa::detected().is_supported());
        assert!(Isa::Scalar.is_supported());
        assert!(Isa::supported().contains(&Isa::detected()));
    }
}
