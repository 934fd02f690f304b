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
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType, bail};

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
        let op = ConvBackward { conv: *self, params: Mutex::new(None) };
        let dx = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let Some((dw, db)) = op.params.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) else {
            bail!("conv1d backward produced no parameter gradients");
        };
        Ok((Some(dx), Some(tensor(dw, w.dims(), w)?), Some(tensor(db, &[w.dim(0)?], w)?)))
    }
}

/// The backward pass of [`Conv1dOp`] (without ReLU) over `(x, weight, dy)`: returns `dx`, leaves the
/// weight and bias gradients in `params`.
struct ConvBackward {
    conv: Conv1dOp,
    params: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "emofuse-conv1d-backward"
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
        let g = self.conv.geom(l1, l2)?;
        if l3.shape().dims() != [g.batch, g.cout, g.out_len] {
            bail!("conv1d backward: gradient {:?} does not match the output", l3.shape());
        }
        dispatch!(s1, T => {
            let x = slice::<T>(s1, l1, "conv1d input")?;
            let w = slice::<T>(s2, l2, "conv1d weight")?;
            let dy = slice::<T>(s3, l3, "conv1d output gradient")?;
            let (dx, dw, db) = conv::backward(&g, x, w, dy);
            *self.params.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((T::to_cpu_storage_owned(dw), T::to_cpu_storage_owned(db)));
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
        })
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
        let op = BnBackward {
            mean_invstd: self.mean_invstd()?,
            gamma: gamma.to_dtype(DType::F64)?.to_vec1()?,
            params: Mutex::new(None),
        };
        let dy = y.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let Some((dg, db)) = op.params.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) else {
            bail!("batch-norm backward produced no parameter gradients");
        };
        Ok((Some(dy), Some(tensor(dg, gamma.dims(), gamma)?), Some(tensor(db, gamma.dims(), gamma)?)))
    }
}

/// The backward pass of [`BnReluOp`] over `(y, out, dout)`: returns `dy`, leaves the weight and bias
/// gradients in `params`.
struct BnBackward {
    mean_invstd: Vec<(f64, f64)>,
    gamma: Vec<f64>,
    params: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "emofuse-batchnorm-relu-backward"
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
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            bail!("batch-norm backward: shapes differ");
        }
        dispatch!(s1, T => {
            let y = slice::<T>(s1, l1, "batch-norm input")?;
            let out = slice::<T>(s2, l2, "batch-norm output")?;
            let dout = slice::<T>(s3, l3, "batch-norm output gradient")?;
            let (dy, dg, db) = batchnorm::backward(&g, y, out, dout, &self.mean_invstd, &self.gamma);
            *self.params.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((T::to_cpu_storage_owned(dg), T::to_cpu_storage_owned(db)));
            Ok((T::to_cpu_storage_owned(dy), l1.shape().clone()))
        })
    }
}
