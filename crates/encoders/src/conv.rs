//! [`Conv1d`]: a 1-D convolution with verified gradients.
//!
//! candle 0.11.1's native CPU `conv1d` backward is wrong (the weight gradient always, the input gradient
//! when padding is 0 and batch > 1), so a network built on `candle_nn::conv1d` silently does not learn.
//! On the CPU this layer runs the crate's conv kernel (im2col + matrix product, with its own backward
//! pass); on other devices it lowers the convolution to candle ops (`pad_with_zeros` + `index_select` +
//! matmul), which backpropagate correctly. A finite-difference test guards the kernel, and a cross-check
//! holds the two paths equal.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels;

/// Shape of one convolution: `(in_channels → out_channels)`, kernel, stride and zero padding; for
/// [`crate::Conv2d`], a square kernel with the same stride and padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zeros added on both ends of every convolved axis.
    pub padding: usize,
}

/// The shape of a [`Conv1d`].
pub type Conv1dConfig = ConvConfig;

impl ConvConfig {
    /// Output length along an axis of length `len`, or `None` when the axis is shorter than the kernel.
    #[must_use]
    pub fn out_len(&self, len: usize) -> Option<usize> {
        (len + 2 * self.padding).checked_sub(self.kernel).map(|n| n / self.stride + 1)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(Error::Config(format!("convolution sizes must be ≥ 1: {self:?}")));
        }
        Ok(())
    }
}

/// A 1-D convolution with bias. Weight `(out, in, kernel)`, bias `(out)` (PyTorch's `Conv1d` layout and
/// names `weight`, `bias`).
///
/// # Shapes
/// `(batch, in_channels, len)` → `(batch, out_channels, (len + 2·padding − kernel) / stride + 1)`.
#[derive(Debug, Clone)]
pub struct Conv1d {
    cfg: Conv1dConfig,
    weight: Tensor,
    bias: Tensor,
}

impl Conv1d {
    /// Reads or creates `weight` and `bias` under `vb`.
    ///
    /// # Errors
    /// A config with a zero size, or a candle error from the var builder.
    pub fn new(cfg: &Conv1dConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let fan_in = cfg.in_channels * cfg.kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        let weight = vb.get_with_hints((cfg.out_channels, cfg.in_channels, cfg.kernel), "weight", init)?;
        let bias = vb.get_with_hints(cfg.out_channels, "bias", init)?;
        Ok(Self { cfg: *cfg, weight, bias })
    }

    /// A convolution over given tensors (weight `(out, in, kernel)`, bias `(out)`).
    ///
    /// # Errors
    /// [`Error::Config`] when the tensors do not have the config's shapes.
    pub fn from_tensors(cfg: &Conv1dConfig, weight: Tensor, bias: Tensor) -> Result<Self> {
        cfg.validate()?;
        if weight.dims() != [cfg.out_channels, cfg.in_channels, cfg.kernel]
            || bias.dims() != [cfg.out_channels]
        {
            return Err(Error::Config(format!(
                "conv1d weight {:?} / bias {:?} do not fit {cfg:?}",
                weight.dims(),
                bias.dims()
            )));
        }
        Ok(Self { cfg: *cfg, weight, bias })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Conv1dConfig {
        &self.cfg
    }

    /// The weight, `(out, in, kernel)`.
    #[must_use]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The im2col gather indices: for kernel tap `j` and output position `o`, padded input index `o·s + j`.
    fn gather_indices(&self, out_len: usize, device: &Device) -> Result<Tensor> {
        let s = self.cfg.stride;
        let idx: Vec<u32> = (0..self.cfg.kernel)
            .flat_map(|j| (0..out_len).map(move |o| u32::try_from(o * s + j).unwrap_or(u32::MAX)))
            .collect();
        Ok(Tensor::from_vec(idx, self.cfg.kernel * out_len, device)?)
    }

    /// The bias, `(out)`.
    #[must_use]
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Applies the convolution.
    ///
    /// # Errors
    /// [`Error::Shape`] when `x` is not `(batch, in_channels, len)`, [`Error::TooShort`] when `len` is
    /// shorter than the kernel after padding.
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &self.weight, &self.bias, false)
    }

    /// `x` when it is `(batch, in_channels, len)` with `len` long enough for the kernel.
    pub(crate) fn check_input(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let x = core_types::EegBatch::new(x.clone(), Some(c.in_channels), None)
            .map_err(|e| core_types::ShapeError { what: "Conv1d input", ..e })?
            .into_tensor();
        self.output_len(x.dim(2)?)?;
        Ok(x)
    }

    /// The output length for input length `len`, or [`Error::TooShort`].
    fn output_len(&self, len: usize) -> Result<usize> {
        let c = &self.cfg;
        c.out_len(len).ok_or_else(|| Error::TooShort {
            layer: format!("conv1d(k={}, p={})", c.kernel, c.padding),
            len,
            min: c.kernel.saturating_sub(2 * c.padding).max(1),
        })
    }

    /// The convolution with a given weight and bias (of this layer's shapes), then ReLU when `relu`: the
    /// fused CPU kernel where it applies, candle ops elsewhere.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        relu: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let x = self.check_input(x)?;
        if crate::cpu_op::supported(&x) && x.dtype() == weight.dtype() && x.dtype() == bias.dtype() {
            let op = kernels::Conv1dOp { stride: c.stride, padding: c.padding, relu };
            return Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?);
        }
        let y = self.forward_generic(&x, weight, bias)?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// The convolution from candle ops only (im2col by `index_select`, then a matrix product): runs on
    /// every device, and serves as the cross-check of the CPU kernel.
    pub(crate) fn forward_generic(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, _, len) = x.dims3()?;
        let out_len = self.output_len(len)?;
        let x = x.clone();
        let padded = if c.padding > 0 { x.pad_with_zeros(2, c.padding, c.padding)? } else { x };
        let idx = self.gather_indices(out_len, padded.device())?;
        // (b, in, k·out_len) → (b, in·k, out_len): row (i, j) holds tap j of channel i for every output.
        let cols = padded.index_select(&idx, 2)?.reshape((b, c.in_channels * c.kernel, out_len))?;
        let w = weight.reshape((c.out_channels, c.in_channels * c.kernel))?;
        let y = w.broadcast_matmul(&cols)?;
        Ok(y.broadcast_add(&bias.reshape((1, c.out_channels, 1))?)?)
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.try_forward(x).map_err(candle_core::Error::wrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    type ConvFn = fn(&Conv1dConfig, &Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

    fn ours(cfg: &Conv1dConfig, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        Conv1d::from_tensors(cfg, w.clone(), b.clone()).map_err(candle_core::Error::wrap)?.forward(x)
    }

    /// candle's own conv1d, whose CPU backward is wrong in 0.11.1.
    fn native(cfg: &Conv1dConfig, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        x.conv1d(w, cfg.padding, cfg.stride, 1, 1)?.broadcast_add(&b.reshape((1, (), 1))?)
    }

    fn random(dims: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The largest relative difference between the autograd gradients of `L = Σ y·r` (with respect to the
    /// input, weight and bias) and central finite differences, in f64.
    fn grad_error(cfg: &Conv1dConfig, batch: usize, len: usize, conv: ConvFn, seed: u64) -> f64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = Var::from_tensor(&random(&[batch, cfg.in_channels, len], &mut rng)).unwrap();
        let w =
            Var::from_tensor(&random(&[cfg.out_channels, cfg.in_channels, cfg.kernel], &mut rng)).unwrap();
        let b = Var::from_tensor(&random(&[cfg.out_channels], &mut rng)).unwrap();
        let out_len = cfg.out_len(len).unwrap();
        let r = random(&[batch, cfg.out_channels, out_len], &mut rng);
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            (conv(cfg, x, w, b).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let y = conv(cfg, x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut worst = 0.0f64;
        for which in 0..3 {
            let var = [&x, &w, &b][which];
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .unwrap_or_else(|| vec![0.0; var.elem_count()]);
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let eps = 1e-6;
            for (i, a) in analytic.iter().enumerate() {
                let bump = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap();
                    let mut args = [x.as_tensor().clone(), w.as_tensor().clone(), b.as_tensor().clone()];
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2])
                };
                let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
                worst = worst.max((a - numeric).abs() / numeric.abs().max(1.0));
            }
        }
        worst
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn gradients_match_finite_differences(
            batch in 1usize..4, cin in 1usize..4, cout in 1usize..4,
            kernel in 1usize..5, stride in 1usize..4, padding in 0usize..3,
            extra in 0usize..8, seed in any::<u64>(),
        ) {
            let cfg = Conv1dConfig { in_channels: cin, out_channels: cout, kernel, stride, padding };
            let len = kernel.saturating_sub(2 * padding).max(1) + extra;
            let err = grad_error(&cfg, batch, len, ours, seed);
            prop_assert!(err < 1e-6, "relative gradient error {}", err);
        }
    }

    /// The check above has teeth: candle's native conv1d fails it.
    #[test]
    fn native_conv1d_backward_fails_the_same_check() {
        let cfg = Conv1dConfig { in_channels: 3, out_channels: 4, kernel: 3, stride: 2, padding: 0 };
        let err = grad_error(&cfg, 2, 11, native, 7);
        assert!(
            err > 1e-3,
            "candle's conv1d backward now matches finite differences ({err}); it can be used"
        );
        // The forward passes agree, so only the backward differs.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (x, w, b) = (random(&[2, 3, 11], &mut rng), random(&[4, 3, 3], &mut rng), random(&[4], &mut rng));
        let d = (ours(&cfg, &x, &w, &b).unwrap() - native(&cfg, &x, &w, &b).unwrap()).unwrap();
        assert!(d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() < 1e-12);
    }

    #[test]
    fn wrong_input_is_a_shape_error() {
        let cfg = Conv1dConfig { in_channels: 3, out_channels: 2, kernel: 3, stride: 1, padding: 0 };
        let w = Tensor::zeros((2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let conv =
            Conv1d::from_tensors(&cfg, w, Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let x = Tensor::zeros((1, 4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(conv.try_forward(&x), Err(Error::Shape(e)) if e.axis == core_types::Axis::Channels));
        let short = Tensor::zeros((1, 3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(conv.try_forward(&short), Err(Error::TooShort { len: 2, .. })));
    }
}

#[cfg(test)]
mod cross_check {
    use super::*;
    use candle_core::Var;

    /// The CPU kernel and the candle-op path agree on outputs and on all three gradients, on the
    /// reference model's layer sizes (f32, as the model runs).
    #[test]
    fn kernel_matches_the_generic_path_on_the_model_layers() {
        let dev = Device::Cpu;
        let layers = [
            (28, 32, 7, 3, 512),
            (32, 64, 7, 3, 256),
            (64, 128, 5, 2, 128),
            (128, 128, 3, 1, 64),
            (13, 64, 5, 2, 500),
            (64, 128, 3, 1, 250),
        ];
        let cases = [2usize, 5, 32].into_iter().flat_map(|b| layers.into_iter().map(move |l| (b, l)));
        for (batch, (cin, cout, kernel, padding, len)) in cases {
            let cfg = Conv1dConfig { in_channels: cin, out_channels: cout, kernel, stride: 2, padding };
            let x = Var::from_tensor(&crate::seeded_randn(0.0, 1.0, &[batch, cin, len], 1, &dev).unwrap())
                .unwrap();
            let w = Var::from_tensor(&crate::seeded_randn(0.0, 0.1, &[cout, cin, kernel], 2, &dev).unwrap())
                .unwrap();
            let b = Var::from_tensor(&crate::seeded_randn(0.0, 0.1, &[cout], 3, &dev).unwrap()).unwrap();
            let conv = Conv1d::from_tensors(&cfg, w.as_tensor().clone(), b.as_tensor().clone()).unwrap();
            let r =
                crate::seeded_randn(0.0, 1.0, &[batch, cout, cfg.out_len(len).unwrap()], 4, &dev).unwrap();
            let fast = conv.try_forward(x.as_tensor()).unwrap();
            let slow = conv.forward_generic(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
            let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (&slow * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let diff = |a: &Tensor, b: &Tensor| -> f32 {
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
                (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
            };
            assert!(diff(&fast, &slow) < 1e-5, "forward {cfg:?}");
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let d = diff(gf.get(v.as_tensor()).unwrap(), gs.get(v.as_tensor()).unwrap());
                assert!(d < 1e-5, "gradient of {name} differs by {d} for batch {batch}, {cfg:?}");
            }
        }
    }
}
