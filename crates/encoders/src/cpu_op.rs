//! Helpers for candle custom ops with CPU kernels in f32 and f64, shared by this crate's kernels and the
//! `fusion` crate's attention op: whether a tensor qualifies, the CPU storage behind a tensor, the
//! contiguous slice a layout describes, a tensor from kernel output, [`dispatch_float`] to run code
//! typed by a storage's element type, and [`vectorize`] to compile an element-wise pass for the matrix
//! products' instruction set.

/// The bounds-checked, single-threaded matrix product of this crate's kernels, for other crates' CPU ops:
/// `matmul(dst, accumulate, lhs, rhs)` over strided [`View`]s of slices, in the [`Real`] types; and
/// [`zeros`], an output buffer zeroed by the pool's threads.
pub use crate::kernels::{Real, View, ViewMut, matmul, zeros};
pub use candle_core::CpuStorage;
use std::cell::Cell;

use candle_core::backend::BackendStorage;
use candle_core::{DType, Layout, Storage, StorageRef, Tensor, WithDType, bail};

/// Runs `op` compiled for the instruction set of the matrix products ([`crate::isa`]: x86-64-v4 for
/// AVX-512, x86-64-v3 for AVX2, baseline for scalar; `pulp`'s own choice elsewhere), so that forcing a
/// path (`force_isa`) moves element-wise passes with the products. Rust does not fuse multiply-adds on its
/// own, so a pass written as plain scalar code gives the same bits on every path.
pub fn vectorize<W: pulp::WithSimd>(op: W) -> W::Output {
    match crate::isa() {
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx512 => match pulp::x86::V4::try_new() {
            Some(simd) => pulp::Simd::vectorize(simd, op),
            None => pulp::Arch::new().dispatch(op),
        },
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx2 => match pulp::x86::V3::try_new() {
            Some(simd) => pulp::Simd::vectorize(simd, op),
            None => pulp::Arch::new().dispatch(op),
        },
        crate::Isa::Scalar => pulp::Simd::vectorize(pulp::Scalar::new(), op),
        _ => pulp::Arch::new().dispatch(op),
    }
}

/// Whether CPU kernels can run on `t` (CPU, f32 or f64), unless this thread is inside
/// [`with_generic_ops`].
#[must_use]
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64) && !GENERIC.with(Cell::get)
}

thread_local! {
    static GENERIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every CPU kernel of this crate and of `fusion` turned off on this thread: layers take the
/// candle-op paths that run on the other devices (a GPU), here on the CPU. Forward passes built inside `f`
/// record those ops, so their backward passes are the candle ops' too. The kernels are back on when `f`
/// returns or panics. Cross-checks use it: `cargo xtask device-check --device cpu` compares the two paths
/// of a whole model.
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC.with(|g| g.replace(true)));
    f()
}

/// The CPU storage behind a tensor's storage guard.
///
/// # Errors
/// When the tensor lives on another device.
pub fn cpu_storage<'a>(s: &'a StorageRef<'_>) -> candle_core::Result<&'a CpuStorage> {
    match &**s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("emofuse CPU kernels run on the CPU only"),
    }
}

/// The contiguous slice of `s` that `l` describes; `what` names the operand in the error.
///
/// # Errors
/// When `s` does not hold `T`, or `l` is not contiguous.
pub fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

/// A tensor of `shape` from a kernel's output storage, on `like`'s device.
///
/// # Errors
/// When the storage is neither f32 nor f64, or its length does not fit `shape`.
pub fn tensor_from(s: CpuStorage, shape: &[usize], like: &Tensor) -> candle_core::Result<Tensor> {
    match s {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, like.device()),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, like.device()),
        other => bail!("unsupported dtype {:?}", other.dtype()),
    }
}

/// The error [`dispatch_float`] returns for a storage that is neither f32 nor f64.
#[must_use]
pub fn unsupported_dtype(s: &CpuStorage) -> candle_core::Error {
    candle_core::Error::Msg(format!("emofuse CPU kernels support f32 and f64, not {:?}", s.dtype())).bt()
}

#[doc(hidden)]
#[macro_export]
macro_rules! __dispatch_float {
    ($storage:expr, $t:ident => $body:expr) => {
        match $storage {
            $crate::cpu_op::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            $crate::cpu_op::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => return ::core::result::Result::Err($crate::cpu_op::unsupported_dtype(other)),
        }
    };
}

/// `dispatch_float!(storage, T => body)`: runs `body` with the type `T` bound to the element type of a
/// [`CpuStorage`] (f32 or f64); for any other type, returns an error from the enclosing function (which
/// returns `candle_core::Result`).
pub use crate::__dispatch_float as dispatch_float;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn generic_ops_turn_the_kernels_off_on_this_thread_only_and_come_back() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(supported(&t));
        assert!(!supported(&t.to_dtype(DType::BF16).unwrap()));
        with_generic_ops(|| {
            assert!(!supported(&t));
            // Another thread keeps its kernels.
            std::thread::scope(|s| s.spawn(|| assert!(supported(&t))).join().unwrap());
            with_generic_ops(|| assert!(!supported(&t)));
            assert!(!supported(&t), "the inner call restored the outer state");
        });
        assert!(supported(&t));
        let panicked = std::panic::catch_unwind(|| with_generic_ops(|| panic!("inside"))).is_err();
        assert!(panicked && supported(&t), "a panic inside leaves the kernels on");
    }
}
