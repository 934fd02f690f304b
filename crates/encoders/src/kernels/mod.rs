//! CPU kernels as candle custom ops with their own backward passes: [`Conv1dOp`] (conv1d + bias,
//! [`Conv2dOp`] its 2-D twin for the video encoder's frames,
//! optionally ReLU: the [`crate::Conv1d`] layer, and a block in evaluation with BatchNorm folded in),
//! [`BlockOp`] (conv1d → training-mode BatchNorm1d → ReLU) and [`LinearOp`] (`x·Wᵀ + b`: the
//! [`crate::Linear`] layer). The conv ops replace a dozen candle ops (and their temporaries) per layer
//! with one pass over contiguous buffers each way; the linear op replaces candle's matrix product, which
//! on the CPU looks up the thread count (and, with `RAYON_NUM_THREADS` unset, reads `/proc/cpuinfo`) on
//! every call.
//! Their gradients are checked against central differences and against the generic candle-op path in
//! the tests of [`crate::Conv1d`] and the encoders, and against PyTorch in the model's parity test.
//!
//! CPU only; on other devices the layers use candle ops.

mod block;
mod conv;
mod gemm;
mod isa;
mod linear;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType, bail};

use rayon::prelude::*;

use crate::cpu_op::{contiguous, cpu_storage, dispatch_float as dispatch, tensor_from};

pub use conv::{Conv2dGeom, ConvGeom};
pub use gemm::{View, ViewMut, matmul, matmul_instruction_set};
pub use isa::{Isa, IsaError, force_isa, isa};
pub use linear::LinearGeom;

/// Buffers of at least this many elements (512 KiB in f32) are zeroed by the pool's threads ([`zeros`]):
/// a training step's outputs are larger, a single window's (a live hop) stay on the calling thread.
const PARALLEL_ZEROS: usize = 1 << 17;

/// A buffer of `len` zeros for a kernel's output. Large ones are written by the threads of the current
/// rayon pool rather than by the calling thread alone: a training step allocates tens of megabytes of
/// outputs and gradients, and zeroing them on the thread that runs the graph was 7 % of the temporal
/// mode's training time, with the other core idle.
#[must_use]
pub fn zeros<T: Real>(len: usize) -> Vec<T> {
    if len < PARALLEL_ZEROS {
        return vec![T::zero(); len];
    }
    let mut v = Vec::with_capacity(len);
    rayon::iter::ParallelExtend::par_extend(&mut v, rayon::iter::repeat_n(T::zero(), len));
    v
}

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

    /// `self.max(0)`: candle's ReLU (a NaN becomes 0), which the linear op's ReLU reproduces bit for bit.
    fn max0(self) -> Self;

    /// Wraps a block's saved forward state.
    fn save(s: block::Saved<Self>) -> SavedAny;

    /// The saved state, if it has this element type.
    fn saved(s: &SavedAny) -> Option<&block::Saved<Self>>;
}

impl Real for f32 {
    fn max0(self) -> Self {
        self.max(0.0)
    }

    fn save(s: block::Saved<Self>) -> SavedAny {
        SavedAny::F32(s)
    }

    fn saved(s: &SavedAny) -> Option<&block::Saved<Self>> {
        if let SavedAny::F32(s) = s { Some(s) } else { None }
    }
}

impl Real for f64 {
    fn max0(self) -> Self {
        self.max(0.0)
    }

    fn save(s: block::Saved<Self>) -> SavedAny {
        SavedAny::F64(s)
    }

    fn saved(s: &SavedAny) -> Option<&block::Saved<Self>> {
        if let SavedAny::F64(s) = s { Some(s) } else { None }
    }
}

/// A block's forward state, whatever its element type.
#[derive(Debug)]
pub enum SavedAny {
    F32(block::Saved<f32>),
    F64(block::Saved<f64>),
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
        conv_geom(self.stride, self.padding, x, w)
    }
}

/// The sizes of a convolution of input `x` with weight `w`.
fn conv_geom(stride: usize, padding: usize, x: &Layout, w: &Layout) -> candle_core::Result<ConvGeom> {
    {
        let (batch, cin, len) = x.shape().dims3()?;
        let (cout, wcin, kernel) = w.shape().dims3()?;
        if wcin != cin {
            bail!("conv1d: input has {cin} channels, weight expects {wcin}");
        }
        let Some(span) = (len + 2 * padding).checked_sub(kernel) else {
            bail!("conv1d: input length {len} shorter than the kernel {kernel}");
        };
        let out_len = span / stride + 1;
        Ok(ConvGeom { batch, cin, cout, len, kernel, stride, padding, out_len })
    }
}

/// The forward pass of a conv op: checks the bias, runs [`conv::forward`].
fn conv_fwd(
    g: &impl conv::Im2col,
    relu: bool,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    out: Shape,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let cout = g.channels().2;
    if l3.shape().dims() != [cout] {
        bail!("conv: bias {:?} does not match {cout} output channels", l3.shape());
    }
    dispatch!(s1, T => {
        let x = contiguous::<T>(s1, l1, "conv input")?;
        let w = contiguous::<T>(s2, l2, "conv weight")?;
        let b = contiguous::<T>(s3, l3, "conv bias")?;
        Ok((T::to_cpu_storage_owned(conv::forward(g, x, w, b, relu)), out))
    })
}

/// The backward pass of a conv op (ReLU's mask applied first when `relu`).
fn conv_bwd<G: conv::Im2col>(
    geom: impl Fn(&Layout, &Layout) -> candle_core::Result<(G, Shape)>,
    relu: bool,
    x: &Tensor,
    w: &Tensor,
    res: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let grad = if relu { (grad * res.gt(0.0)?.to_dtype(grad.dtype())?)? } else { grad.clone() };
    let grad = grad.contiguous()?;
    let need_dx = x.track_op();
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let (g, out) = geom(xl, wl)?;
    if gl.shape() != &out {
        bail!("conv backward: gradient {:?} does not match the output {out:?}", gl.shape());
    }
    let (xs, ws, gs) = (cpu_storage(&xs)?, cpu_storage(&ws)?, cpu_storage(&gs)?);
    let (dx, dw, db) = dispatch!(xs, T => {
        let dy = contiguous::<T>(gs, gl, "conv output gradient")?;
        let (dx, dw, db) =
            conv::backward(&g, contiguous::<T>(xs, xl, "conv input")?, contiguous::<T>(ws, wl, "conv weight")?, dy, need_dx);
        (dx.map(T::to_cpu_storage_owned), T::to_cpu_storage_owned(dw), T::to_cpu_storage_owned(db))
    });
    let dx = dx.map(|d| tensor_from(d, x.dims(), x)).transpose()?;
    Ok((dx, Some(tensor_from(dw, w.dims(), w)?), Some(tensor_from(db, &[g.channels().2], w)?)))
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
        let out = Shape::from((g.batch, g.cout, g.out_len));
        conv_fwd(&g, self.relu, (s1, l1), (s2, l2), (s3, l3), out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let geom = |xl: &Layout, wl: &Layout| {
            let g = self.geom(xl, wl)?;
            Ok((g, Shape::from((g.batch, g.cout, g.out_len))))
        };
        conv_bwd(geom, self.relu, x, w, res, grad)
    }
}

/// Conv2d with bias over `(x, weight, bias)`: `x` `(batch, cin, height, width)`, weight
/// `(cout, cin, kernel, kernel)`; ReLU afterwards when `relu`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
}

impl Conv2dOp {
    fn geom(&self, x: &Layout, w: &Layout) -> candle_core::Result<(Conv2dGeom, Shape)> {
        let (batch, cin, height, width) = x.shape().dims4()?;
        let (cout, wcin, kernel, kw) = w.shape().dims4()?;
        if wcin != cin || kw != kernel {
            bail!("conv2d: input {:?} does not fit weight {:?}", x.shape(), w.shape());
        }
        let (p, s) = (self.padding, self.stride);
        let (Some(sh), Some(sw)) =
            ((height + 2 * p).checked_sub(kernel), (width + 2 * p).checked_sub(kernel))
        else {
            bail!("conv2d: input {height}×{width} smaller than the kernel {kernel}");
        };
        let (out_height, out_width) = (sh / s + 1, sw / s + 1);
        let g = Conv2dGeom {
            batch,
            cin,
            cout,
            height,
            width,
            kernel,
            stride: s,
            padding: p,
            out_height,
            out_width,
        };
        Ok((g, Shape::from((batch, cout, out_height, out_width))))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "emofuse-conv2d"
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
        let (g, out) = self.geom(l1, l2)?;
        conv_fwd(&g, self.relu, (s1, l1), (s2, l2), (s3, l3), out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        conv_bwd(|xl, wl| self.geom(xl, wl), self.relu, x, w, res, grad)
    }
}

/// Per-channel `(mean, biased variance)` of a block's conv output (bias included), filled by
/// [`BlockOp`]'s forward pass: what the running statistics are updated from.
pub type BatchStats = Arc<Mutex<Option<Vec<(f64, f64)>>>>;

/// conv1d → BatchNorm1d with batch statistics → ReLU over `(x, weight, params)`, where `params` is
/// `(3, cout)`: the conv bias, the BatchNorm weight and the BatchNorm bias.
#[derive(Debug)]
pub struct BlockOp {
    stride: usize,
    padding: usize,
    eps: f64,
    stats: BatchStats,
    saved: Mutex<Option<SavedAny>>,
}

impl BlockOp {
    /// A block op for a conv with `stride` and `padding` and a BatchNorm with epsilon `eps`.
    pub fn new(stride: usize, padding: usize, eps: f64) -> Self {
        Self { stride, padding, eps, stats: Arc::default(), saved: Mutex::new(None) }
    }

    /// A handle to the batch statistics the forward pass will compute.
    pub fn stats_handle(&self) -> BatchStats {
        Arc::clone(&self.stats)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "emofuse-conv-batchnorm-relu"
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
        let g = conv_geom(self.stride, self.padding, l1, l2)?;
        if l3.shape().dims() != [3, g.cout] {
            bail!("conv block: parameters {:?} are not (3, {})", l3.shape(), g.cout);
        }
        if g.batch * g.out_len < 2 {
            bail!("batch-norm in training mode needs more than one value per channel");
        }
        dispatch!(s1, T => {
            let x = contiguous::<T>(s1, l1, "conv block input")?;
            let w = contiguous::<T>(s2, l2, "conv block weight")?;
            let p = contiguous::<T>(s3, l3, "conv block parameters")?;
            let (bias, rest) = p.split_at(g.cout);
            let (gamma, beta) = rest.split_at(g.cout);
            let (out, saved) = block::forward(&g, x, w, gamma, beta, self.eps);
            let stats = saved.mean_var.iter().zip(bias).map(|(&(m, v), b)| (m + b.to_f64(), v)).collect();
            *lock(&self.stats) = Some(stats);
            *lock(&self.saved) = Some(T::save(saved));
            Ok((T::to_cpu_storage_owned(out), Shape::from((g.batch, g.cout, g.out_len))))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        p: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gamma: Vec<f64> = p.get(1)?.to_dtype(DType::F64)?.to_vec1()?;
        let grad = grad.contiguous()?;
        let need_dx = x.track_op();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (os, ol) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let g = conv_geom(self.stride, self.padding, xl, wl)?;
        if ol.shape() != gl.shape() || gl.shape().dims() != [g.batch, g.cout, g.out_len] {
            bail!("conv block backward: gradient {:?} does not match the output", gl.shape());
        }
        let saved = lock(&self.saved);
        let Some(saved) = saved.as_ref() else { bail!("conv block backward before its forward pass") };
        let (xs, ws, os, gs) = (cpu_storage(&xs)?, cpu_storage(&ws)?, cpu_storage(&os)?, cpu_storage(&gs)?);
        let (dx, dp, dw) = dispatch!(xs, T => {
            let Some(saved) = T::saved(saved) else { bail!("conv block: dtype changed between passes") };
            let (dx, dw, db, dgamma, dbeta) = block::backward(
                &g,
                contiguous::<T>(xs, xl, "conv block input")?,
                contiguous::<T>(ws, wl, "conv block weight")?,
                saved,
                contiguous::<T>(os, ol, "conv block output")?,
                contiguous::<T>(gs, gl, "conv block output gradient")?,
                &gamma,
                self.eps,
                need_dx,
            );
            let dp: Vec<T> = db.into_iter().chain(dgamma).chain(dbeta).collect();
            (dx.map(T::to_cpu_storage_owned), T::to_cpu_storage_owned(dp), T::to_cpu_storage_owned(dw))
        });
        let dx = dx.map(|d| tensor_from(d, x.dims(), x)).transpose()?;
        Ok((dx, Some(tensor_from(dw, w.dims(), w)?), Some(tensor_from(dp, p.dims(), p)?)))
    }
}

/// `x·Wᵀ + b` over `(x, weight, bias)`: `x` `(…, inputs)` of rank ≥ 2 (its leading dimensions are the
/// rows, and the output keeps them), weight `(outputs, inputs)`, bias `(outputs)`. Taking any rank saves
/// the two reshapes around a rank-2 op, each a node of the graph whose gradient candle would allocate,
/// zero and add once more.
///
/// [`LinearOp::with_relu`]: `max(x·Wᵀ + b, 0)` as one op, the bits of the linear op followed by candle's
/// ReLU: the output is candle's `max(v, 0)`, and the gradient reaching the product is candle's for that
/// pair of nodes, `0 + dy·[v ≥ 0]` (the pre-activation `v` is kept for the backward pass). One node less,
/// and no ReLU pass of its own either way.
#[derive(Debug, Clone, Default)]
pub struct LinearOp {
    /// With a ReLU: the pre-activation of the last forward pass.
    relu: Option<Arc<Mutex<Option<CpuStorage>>>>,
}

impl LinearOp {
    /// The linear layer and a ReLU.
    #[must_use]
    pub fn with_relu() -> Self {
        Self { relu: Some(Arc::default()) }
    }
}

/// The output shape of [`LinearOp`] for an input of shape `x`.
fn linear_out_shape(x: &Shape, outputs: usize) -> Shape {
    let dims = x.dims();
    Shape::from([&dims[..dims.len().saturating_sub(1)], &[outputs]].concat())
}

fn linear_geom(x: &Layout, w: &Layout, b: &Layout) -> candle_core::Result<LinearGeom> {
    let dims = x.shape().dims();
    let Some((&inputs, lead)) = dims.split_last().filter(|_| dims.len() >= 2) else {
        bail!("linear: input {:?} has fewer than two dimensions", x.shape());
    };
    let rows = lead.iter().product::<usize>();
    let (outputs, w_inputs) = w.shape().dims2()?;
    if w_inputs != inputs {
        bail!("linear: input has {inputs} features, weight expects {w_inputs}");
    }
    if b.shape().dims() != [outputs] {
        bail!("linear: bias {:?} does not match {outputs} outputs", b.shape());
    }
    Ok(LinearGeom { rows, inputs, outputs })
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "emofuse-linear"
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
        let g = linear_geom(l1, l2, l3)?;
        dispatch!(s1, T => {
            let x = contiguous::<T>(s1, l1, "linear input")?;
            let w = contiguous::<T>(s2, l2, "linear weight")?;
            let b = contiguous::<T>(s3, l3, "linear bias")?;
            let y = linear::forward(&g, x, w, b);
            let y = match &self.relu {
                None => y,
                Some(saved) => {
                    let out: Vec<T> = y.par_iter().with_min_len(1 << 14).map(|v| v.max0()).collect();
                    *saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(T::to_cpu_storage_owned(y));
                    out
                }
            };
            Ok((T::to_cpu_storage_owned(y), linear_out_shape(l1.shape(), g.outputs)))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let need_dx = x.track_op();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let g = linear_geom(xl, wl, b.layout())?;
        if *gl.shape() != linear_out_shape(xl.shape(), g.outputs) {
            bail!("linear backward: gradient {:?} does not match the output", gl.shape());
        }
        let (xs, ws, gs) = (cpu_storage(&xs)?, cpu_storage(&ws)?, cpu_storage(&gs)?);
        let saved = self.relu.as_ref().map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let (dx, dw, db) = dispatch!(xs, T => {
            let dy = contiguous::<T>(gs, gl, "linear output gradient")?;
            let masked: Vec<T>;
            let dy = match &saved {
                None => dy,
                Some(pre) => {
                    let Some(pre) = pre.as_ref() else { bail!("linear backward: no pre-activation saved") };
                    let pre = T::cpu_storage_as_slice(pre)?;
                    let zero = T::from_f64(0.0);
                    // The mask as a number (not a branch: the signs are unpredictable), as candle casts it.
                    masked = dy
                        .par_iter()
                        .zip(pre.par_iter())
                        .with_min_len(1 << 14)
                        .map(|(g, v)| zero + *g * T::from_f64(f64::from(u8::from(*v >= zero))))
                        .collect();
                    &masked[..]
                }
            };
            let (dx, dw, db) = linear::backward(
                &g,
                contiguous::<T>(xs, xl, "linear input")?,
                contiguous::<T>(ws, wl, "linear weight")?,
                dy,
                need_dx,
            );
            (dx.map(T::to_cpu_storage_owned), T::to_cpu_storage_owned(dw), T::to_cpu_storage_owned(db))
        });
        let dx = dx.map(|d| tensor_from(d, x.dims(), x)).transpose()?;
        Ok((dx, Some(tensor_from(dw, w.dims(), w)?), Some(tensor_from(db, b.dims(), b)?)))
    }
}

#[cfg(test)]
mod tests {
    /// Small and large buffers (serial and parallel zeroing) hold exactly `len` zeros.
    #[test]
    fn zeros_are_zeros_of_the_asked_length() {
        for len in [0, 1, super::PARALLEL_ZEROS - 1, super::PARALLEL_ZEROS, 3 * super::PARALLEL_ZEROS + 7] {
            let v = super::zeros::<f32>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| x.to_bits() == 0));
            let w = super::zeros::<f64>(len);
            assert!(w.len() == len && w.iter().all(|x| x.to_bits() == 0));
        }
    }
}
