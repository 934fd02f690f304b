//! CPU kernels for the convolution blocks, as candle custom ops with their own backward passes:
//! [`Conv1dOp`] (conv1d + bias, optionally ReLU) and [`BnReluOp`] (training-mode BatchNorm1d + ReLU).
//! They replace a dozen candle ops (and their temporaries) per layer with one pass over contiguous
//! buffers each way. Their gradients are checked against central differences and against the generic
//! candle-op path in the tests of [`crate::Conv1d`] and the encoders.
//!
//! CPU only; on other devices the layers use candle ops.

mod batchnorm;
mod conv;
mod gemm;

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, Shape, Storage, StorageRef, Tensor, WithDType, bail,
};

pub use batchnorm::BnGeom;
pub use conv::ConvGeom;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types the kernels run on: `f32` and `f64`.
pub trait Real: WithDType + sealed::Sealed {
    /// `max(v, 0)`, NaN kept.
    fn relu(self) -> Self {
        if self < Self::zero() { Self::zero() } else { self }
    }
}
impl Real for f32 {}
impl Real for f64 {}

/// Whether the kernels can run on `t` (CPU, f32 or f64).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The CPU storage behind a tensor's storage guard.
fn cpu<'a>(s: &'a StorageRef<'_>) -> candle_core::Result<&'a CpuStorage> {
    match &**s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("emofuse kernels run on the CPU only"),
    }
}

/// The contiguous slice of `s` that `l` describes.
fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

/// A tensor of `shape` from a CPU storage's values.
fn tensor(s: CpuStorage, shape: &[usize], like: &Tensor) -> candle_core::Result<Tensor> {
    match s {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, like.device()),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, like.device()),
        other => bail!("unsupported dtype {:?}", other.dtype()),
    }
}

/// Runs `$body` with `$t` bound to the element type of `$storage`.
macro_rules! dispatch {
    ($storage:expr, $t:ident => $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => bail!("emofuse kernels support f32 and f64, not {:?}", other.dtype()),
        }
    };
}

/// Conv1d with bias over `(x, weight, bias)`; ReLU afterwards when `relu`.
#[derive(Debug, Clone, Copy)]
pub struct Conv1dOp {
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
}

impl Conv1dOp {
    fn geom(&self, x: &Layout, w: &Layout) -> candle_core::Result<ConvGeom> {
        let (batch, cin, len) = x.shape().dims3()?;
        let (cout, wcin, kernel) = w.shape().dims3()?;
        if wcin != cin {
            bail!("conv1d: input has {cin} channels, weight expects {wcin}");
        }
        let Some(span) = (len + 2 * self.padding).checked_sub(kernel) else {
            bail!("conv1d: input length {len} shorter than the kernel {kernel}");
        };
        let out_len = span / self.stride + 1;
        Ok(ConvGeom { batch, cin, cout, len, kernel, stride: self.stride, padding: self.padding, out_len })
    }
}

impl CustomOp3 for Conv1dOp {
    fn name(&self) -> &'static str {
        "emofuse-conv1d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geom(l1, l2)?;
        if l3.shape().dims() != [g.cout] {
            bail!("conv1d: bias {:?} does not match {} output channels", l3.shape(), g.cout);
        }
        dispatch!(s1, T => {
            let x = slice::<T>(s1, l1, "conv1d input")?;
            let w = slice::<T>(s2, l2, "conv1d weight")?;
            let b = slice::<T>(s3, l3, "conv1d bias")?;
            let y = conv::forward(&g, x, w, b, self.relu);
            Ok((T::to_cpu_storage_owned(y), Shape::from((g.batch, g.cout, g.out_len))))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu { (grad * res.gt(0.0)?.to_dtype(grad.dtype())?)? } else { grad.clone() };
        let grad = grad.contiguous()?;
        let need_dx = x.track_op();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let g = self.geom(xl, wl)?;
        if gl.shape().dims() != [g.batch, g.cout, g.out_len] {
            bail!("conv1d backward: gradient {:?} does not match the output", gl.shape());
        }
        let (xs, ws, gs) = (cpu(&xs)?, cpu(&ws)?, cpu(&gs)?);
        let (dx, dw, db) = dispatch!(xs, T => {
            let dy = slice::<T>(gs, gl, "conv1d output gradient")?;
            let (dx, dw, db) =
                conv::backward(&g, slice::<T>(xs, xl, "conv1d input")?, slice::<T>(ws, wl, "conv1d weight")?, dy, need_dx);
            (dx.map(T::to_cpu_storage_owned), T::to_cpu_storage_owned(dw), T::to_cpu_storage_owned(db))
        });
        let dx = dx.map(|d| tensor(d, x.dims(), x)).transpose()?;
        Ok((dx, Some(tensor(dw, w.dims(), w)?), Some(tensor(db, &[g.cout], w)?)))
    }
}

/// Training-mode BatchNorm1d (batch statistics) + ReLU over `(y, gamma, beta)`. After the forward pass,
/// [`BnReluOp::batch_stats`] gives the batch mean and biased variance per channel, for the running
/// statistics.
#[derive(Debug)]
pub struct BnReluOp {
    eps: f64,
    stats: BatchStats,
}

/// Per-channel `(mean, biased variance)` of a batch, filled by [`BnReluOp`]'s forward pass.
pub type BatchStats = Arc<Mutex<Option<Vec<(f64, f64)>>>>;

impl BnReluOp {
    /// An op with BatchNorm epsilon `eps`.
    pub fn new(eps: f64) -> Self {
        Self { eps, stats: Arc::default() }
    }

    /// A handle to the statistics the forward pass will compute.
    pub fn stats_handle(&self) -> BatchStats {
        Arc::clone(&self.stats)
    }

    /// Per channel `(mean, biased variance)` of the last forward pass.
    pub fn batch_stats(&self) -> Option<Vec<(f64, f64)>> {
        self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn mean_invstd(&self) -> candle_core::Result<Vec<(f64, f64)>> {
        let Some(stats) = self.batch_stats() else { bail!("batch-norm backward before its forward pass") };
        Ok(stats.iter().map(|&(m, v)| (m, 1.0 / (v + self.eps).sqrt())).collect())
    }
}

fn bn_geom(l: &Layout) -> candle_core::Result<BnGeom> {
    let (batch, channels, len) = l.shape().dims3()?;
    if batch * len < 2 {
        bail!("batch-norm in training mode needs more than one value per channel, got {:?}", l.shape());
    }
    Ok(BnGeom { batch, channels, len })
}

impl CustomOp3 for BnReluOp {
    fn name(&self) -> &'static str {
        "emofuse-batchnorm-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = bn_geom(l1)?;
        if l2.shape().dims() != [g.channels] || l3.shape().dims() != [g.channels] {
            bail!("batch-norm: weight/bias do not match {} channels", g.channels);
        }
        dispatch!(s1, T => {
            let y = slice::<T>(s1, l1, "batch-norm input")?;
            let gamma = slice::<T>(s2, l2, "batch-norm weight")?;
            let beta = slice::<T>(s3, l3, "batch-norm bias")?;
            let stats = batchnorm::stats(&g, y);
            *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
            let out = batchnorm::forward(&g, y, &self.mean_invstd()?, gamma, beta);
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        y: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mean_invstd = self.mean_invstd()?;
        let gamma_values: Vec<f64> = gamma.to_dtype(DType::F64)?.to_vec1()?;
        let grad = grad.contiguous()?;
        let (ys, yl) = y.storage_and_layout();
        let (os, ol) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let g = bn_geom(yl)?;
        if ol.shape() != yl.shape() || gl.shape() != yl.shape() || mean_invstd.len() != g.channels {
            bail!("batch-norm backward: shapes differ");
        }
        let (ys, os, gs) = (cpu(&ys)?, cpu(&os)?, cpu(&gs)?);
        let (dy, dg, db) = dispatch!(ys, T => {
            let (dy, dg, db) = batchnorm::backward(
                &g,
                slice::<T>(ys, yl, "batch-norm input")?,
                slice::<T>(os, ol, "batch-norm output")?,
                slice::<T>(gs, gl, "batch-norm output gradient")?,
                &mean_invstd,
                &gamma_values,
            );
            (T::to_cpu_storage_owned(dy), T::to_cpu_storage_owned(dg), T::to_cpu_storage_owned(db))
        });
        Ok((
            Some(tensor(dy, y.dims(), y)?),
            Some(tensor(dg, gamma.dims(), gamma)?),
            Some(tensor(db, gamma.dims(), gamma)?),
        ))
    }
}
