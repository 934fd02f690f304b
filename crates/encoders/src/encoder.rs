//! [`EegEncoder`] and [`AudioEncoder`]: stacks of `Conv1d → BatchNorm1d → ReLU` blocks, then the mean over
//! time.

use candle_core::{D, DType, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::conv::{Conv1d, Conv1dConfig};
use crate::error::{Error, Result};
use crate::kernels;

/// BatchNorm epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
/// Size of every latent vector.
pub const LATENT_DIM: usize = 128;

/// One block's convolution: output channels, kernel, stride, padding (input channels follow the chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on both ends.
    pub padding: usize,
}

pub(crate) const fn spec(out_channels: usize, kernel: usize, stride: usize, padding: usize) -> ConvSpec {
    ConvSpec { out_channels, kernel, stride, padding }
}

/// A convolutional encoder: input channels and the block specs. The last block's output channels are the
/// latent size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Channels of the input (EEG electrodes or MFCC coefficients).
    pub in_channels: usize,
    /// The blocks, first to last.
    pub blocks: Vec<ConvSpec>,
}

impl EncoderConfig {
    /// The reference EEG encoder for `channels` electrodes: (32,k7,s2,p3), (64,7,2,3), (128,5,2,2),
    /// (128,3,2,1).
    #[must_use]
    pub fn eeg(channels: usize) -> Self {
        Self {
            in_channels: channels,
            blocks: vec![spec(32, 7, 2, 3), spec(64, 7, 2, 3), spec(128, 5, 2, 2), spec(LATENT_DIM, 3, 2, 1)],
        }
    }

    /// The reference audio encoder over 13 MFCCs: (64,k5,s2,p2), (128,3,2,1).
    #[must_use]
    pub fn audio() -> Self {
        Self { in_channels: 13, blocks: vec![spec(64, 5, 2, 2), spec(LATENT_DIM, 3, 2, 1)] }
    }

    /// The latent size (the last block's output channels).
    #[must_use]
    pub fn latent_dim(&self) -> usize {
        self.blocks.last().map_or(self.in_channels, |b| b.out_channels)
    }

    /// The conv configs of the blocks, with input channels chained.
    #[must_use]
    pub fn convs(&self) -> Vec<Conv1dConfig> {
        let mut cin = self.in_channels;
        self.blocks
            .iter()
            .map(|b| {
                let c = Conv1dConfig {
                    in_channels: cin,
                    out_channels: b.out_channels,
                    kernel: b.kernel,
                    stride: b.stride,
                    padding: b.padding,
                };
                cin = b.out_channels;
                c
            })
            .collect()
    }

    /// The shortest input every block accepts.
    #[must_use]
    pub fn min_len(&self) -> usize {
        (1..usize::MAX).find(|&l| self.out_len(l).is_some()).unwrap_or(usize::MAX)
    }

    /// The time length after every block, or `None` if some block gets an input shorter than its kernel.
    #[must_use]
    pub fn out_len(&self, len: usize) -> Option<usize> {
        self.convs().iter().try_fold(len, |l, c| c.out_len(l))
    }

    /// The time of each output step, in seconds from the window start, for an input of `len` samples at
    /// `input_rate` samples per second whose sample `n` lies at `n / input_rate` s: the centre of the step's
    /// receptive field (a block maps output step `j` to input position `j·stride − padding +
    /// (kernel − 1)/2`). `None` when `len` is too short for the kernels.
    #[must_use]
    pub fn step_times(&self, len: usize, input_rate: f64) -> Option<Vec<f64>> {
        let steps = self.out_len(len)?;
        let convs = self.convs();
        Some(
            (0..steps)
                .map(|j| {
                    let centre = convs.iter().rev().fold(j as f64, |pos, c| {
                        pos * c.stride as f64 - c.padding as f64 + (c.kernel as f64 - 1.0) / 2.0
                    });
                    centre / input_rate
                })
                .collect(),
        )
    }
}

/// Conv1d → BatchNorm1d → ReLU; tensor names `{i}.0.*` (conv) and `{i}.1.*` (BatchNorm) as in PyTorch's
/// `nn.Sequential`.
#[derive(Debug, Clone)]
struct Block {
    conv: Conv1d,
    bn: BatchNorm,
}

impl Block {
    /// On CPU (f32/f64): in training, one kernel for conv → BatchNorm (batch statistics; running
    /// statistics updated as PyTorch does, with the unbiased variance) → ReLU; in evaluation, BatchNorm
    /// folded into the conv's weight and bias and ReLU fused into the conv.
    /// Elsewhere: candle ops.
    fn run(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let Some((gamma, beta)) = self.bn.weight_and_bias() else {
            return Err(Error::Config("encoder BatchNorm layers are affine".into()));
        };
        if !crate::cpu_op::supported(x) || gamma.dtype() != x.dtype() {
            let y = self.conv.try_forward(x)?;
            return Ok(self.bn.forward_t(&y, train)?.relu()?);
        }
        if train {
            let c = self.conv.config();
            let op = kernels::BlockOp::new(c.stride, c.padding, self.bn.eps());
            let stats = op.stats_handle();
            let params = Tensor::stack(&[self.conv.bias(), gamma, beta], 0)?;
            let x = self.conv.check_input(x)?;
            let out = x.contiguous()?.apply_op3(&self.conv.weight().contiguous()?, &params, op)?;
            let (batch, _, len) = out.dims3()?;
            let stats = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            self.update_running_stats(&stats.unwrap_or_default(), batch * len)?;
            Ok(out)
        } else {
            let scale = (gamma / (self.bn.running_var().detach() + self.bn.eps())?.sqrt()?)?;
            let weight = self.conv.weight().broadcast_mul(&scale.reshape(((), 1, 1))?)?;
            let bias = (((self.conv.bias() - self.bn.running_mean().detach())? * &scale)? + beta)?;
            self.conv.forward_with(x, &weight, &bias, true)
        }
    }

    /// `running = (1 − momentum)·running + momentum·batch`, with the unbiased batch variance.
    fn update_running_stats(&self, stats: &[(f64, f64)], count: usize) -> Result<()> {
        let (rm, rv) = (self.bn.running_mean(), self.bn.running_var());
        if stats.len() != rm.elem_count() {
            return Err(Error::Config("batch-norm statistics missing after the forward pass".into()));
        }
        let m = self.bn.momentum();
        let unbias = count as f64 / (count as f64 - 1.0);
        let old_mean: Vec<f64> = rm.to_dtype(DType::F64)?.to_vec1()?;
        let old_var: Vec<f64> = rv.to_dtype(DType::F64)?.to_vec1()?;
        let mean: Vec<f64> = old_mean.iter().zip(stats).map(|(r, s)| (1.0 - m) * r + m * s.0).collect();
        let var: Vec<f64> =
            old_var.iter().zip(stats).map(|(r, s)| (1.0 - m) * r + m * s.1 * unbias).collect();
        for (target, values) in [(rm, mean), (rv, var)] {
            let t = Tensor::from_vec(values, target.dims(), target.device())?.to_dtype(target.dtype())?;
            Var::from_tensor(target)?.set(&t)?;
        }
        Ok(())
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.run(x, train).map_err(candle_core::Error::wrap)
    }
}

/// The shared body of both encoders (and the video encoder's temporal part).
#[derive(Debug, Clone)]
pub(crate) struct ConvEncoder {
    cfg: EncoderConfig,
    blocks: Vec<Block>,
}

impl ConvEncoder {
    pub(crate) fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.blocks.is_empty() {
            return Err(Error::Config("an encoder needs at least one block".into()));
        }
        let vb = vb.pp("convs");
        let bn_cfg = BatchNormConfig { eps: BN_EPS, remove_mean: true, affine: true, momentum: BN_MOMENTUM };
        let blocks = cfg
            .convs()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let vb = vb.pp(i.to_string());
                Ok(Block {
                    conv: Conv1d::new(c, vb.pp("0"))?,
                    bn: candle_nn::batch_norm(c.out_channels, bn_cfg, vb.pp("1"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cfg: cfg.clone(), blocks })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.features(x, train)?.mean(D::Minus1)?)
    }

    /// The last block's output, `(batch, latent, steps)`, before the mean over time.
    pub(crate) fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, len) = x.dims3()?;
        if self.cfg.out_len(len).is_none() {
            return Err(Error::TooShort { layer: "encoder".into(), len, min: self.cfg.min_len() });
        }
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.run(&h, train)?;
        }
        Ok(h)
    }
}

macro_rules! encoder {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(ConvEncoder);

        impl $name {
            /// Builds the encoder; tensors under `vb` are named `convs.{i}.0.*` and `convs.{i}.1.*`.
            ///
            /// # Errors
            /// A config without blocks, or a candle error from the var builder.
            pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
                ConvEncoder::new(cfg, vb).map(Self)
            }

            /// The configuration.
            #[must_use]
            pub fn config(&self) -> &EncoderConfig {
                &self.0.cfg
            }

            /// Encodes a batch; `train` selects batch statistics (and updates the running ones).
            ///
            /// # Errors
            /// [`Error::Shape`] for an input that is not `(batch, in_channels, len)`, [`Error::TooShort`]
            /// when `len` is too short for the kernels.
            pub fn encode(&self, x: &Tensor, train: bool) -> Result<core_types::Latent> {
                let x = core_types::EegBatch::new(x.clone(), Some(self.0.cfg.in_channels), None)
                    .map_err(|e| core_types::ShapeError { what: $what, ..e })?;
                let z = self.0.forward_t(x.tensor(), train)?;
                Ok(core_types::Latent::new(z, self.0.cfg.latent_dim())?)
            }

            /// Encodes a batch and keeps its time axis: the sequence `(batch, steps, latent)` before pooling,
            /// with each step's time in seconds for an input at `input_rate` samples (or frames) per second,
            /// and the pooled latent, the same numbers as [`Self::encode`].
            ///
            /// # Errors
            /// As [`Self::encode`].
            pub fn encode_sequence(
                &self,
                x: &Tensor,
                input_rate: f64,
                train: bool,
            ) -> Result<(core_types::Sequence, core_types::Latent)> {
                let x = core_types::EegBatch::new(x.clone(), Some(self.0.cfg.in_channels), None)
                    .map_err(|e| core_types::ShapeError { what: $what, ..e })?;
                let h = self.0.features(x.tensor(), train)?;
                let d = self.0.cfg.latent_dim();
                let times = self.0.cfg.step_times(x.time(), input_rate).unwrap_or_default();
                let latent = core_types::Latent::new(h.mean(D::Minus1)?, d)?;
                let sequence = core_types::Sequence::new(h.transpose(1, 2)?, d, times)?;
                Ok((sequence, latent))
            }
        }

        impl ModuleT for $name {
            fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
                self.encode(x, train).map(core_types::Latent::into_tensor).map_err(candle_core::Error::wrap)
            }
        }
    };
}

encoder! {
    /// EEG windows `(batch, channels, time)` → latent `(batch, 128)`: four conv blocks, mean over time.
    /// Any channel count (set in the config) and any time length ≥ the kernels' reach.
    EegEncoder, "EEG input"
}

encoder! {
    /// MFCC windows `(batch, 13, frames)` → latent `(batch, 128)`: two conv blocks, mean over time.
    AudioEncoder, "MFCC input"
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn sequences_pool_to_the_latent_and_carry_their_step_times() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let eeg = EegEncoder::new(&EncoderConfig::eeg(4), vb.pp("eeg")).unwrap();
        let audio = AudioEncoder::new(&EncoderConfig::audio(), vb.pp("audio")).unwrap();
        crate::init_pytorch_default(&varmap, 1).unwrap();
        let x = crate::seeded_randn(0.0, 1.0, &[3, 4, 500], 1, &Device::Cpu).unwrap();
        let (seq, latent) = eeg.encode_sequence(&x, 100.0, false).unwrap();
        assert_eq!((seq.batch(), seq.steps(), seq.dim()), (3, 32, 128));
        let pooled = seq.tensor().mean(1).unwrap();
        assert!(max_rel(&pooled, latent.tensor()) < 1e-6, "the latent is the sequence's mean over time");
        assert_eq!(
            latent.tensor().to_vec2::<f32>().unwrap(),
            eeg.encode(&x, false).unwrap().tensor().to_vec2::<f32>().unwrap()
        );
        // Four stride-2 blocks: steps 16 input samples apart, the first centred at 0 (kernels centred by
        // their padding); on a 100 Hz input, 0.16 s apart.
        let t = seq.times();
        assert!(
            t[0].abs() < 1e-12 && (t[1] - 0.16).abs() < 1e-12 && (t[31] - 31.0 * 0.16).abs() < 1e-9,
            "{t:?}"
        );
        let m = crate::seeded_randn(0.0, 1.0, &[2, 13, 500], 2, &Device::Cpu).unwrap();
        let (seq, _) = audio.encode_sequence(&m, 100.0, false).unwrap();
        assert_eq!(seq.steps(), 125);
        assert!((seq.times()[124] - 124.0 * 0.04).abs() < 1e-9, "{:?}", &seq.times()[120..]);
        // Every step lies inside the window, on one clock for both encoders.
        assert!(seq.times().iter().all(|&s| (0.0..5.0).contains(&s)));
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.to_dtype(DType::F64).unwrap();
        let b = b.to_dtype(DType::F64).unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-9);
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale
    }

    /// The fused CPU path of a block (conv kernel + BatchNorm/ReLU kernel in training, folded BatchNorm
    /// in evaluation) equals the candle-op path: outputs, every gradient, and the running statistics.
    #[test]
    fn fused_block_matches_candle_ops() {
        for dtype in [DType::F32, DType::F64] {
            for (batch, train) in [(3, true), (6, true), (32, true), (1, true), (4, false)] {
                let make = || {
                    let varmap = VarMap::new();
                    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
                    let enc = ConvEncoder::new(&EncoderConfig::audio(), vb).unwrap();
                    crate::init_pytorch_default(&varmap, 5).unwrap();
                    // Move BatchNorm parameters and running statistics away from their defaults.
                    let data = varmap.data().lock().unwrap();
                    let mut names: Vec<&String> = data.keys().filter(|n| n.contains(".1.")).collect();
                    names.sort();
                    for (i, name) in names.into_iter().enumerate() {
                        let var = &data[name];
                        let noise = crate::seeded_randn(0.0, 0.2, var.dims(), 100 + i as u64, &Device::Cpu)
                            .unwrap()
                            .abs()
                            .unwrap();
                        var.set(&(noise + 0.7).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    }
                    drop(data);
                    (varmap, enc)
                };
                let (vm_fast, fast) = make();
                let (vm_slow, slow) = make();
                for (name, a) in vm_fast.data().lock().unwrap().iter() {
                    vm_slow.data().lock().unwrap()[name].set(a.as_tensor()).unwrap();
                }
                // Seeded inputs: with random ones, an F32 pre-activation within rounding of 0 now and then
                // falls on the other side of a ReLU in one path (about 1 draw in 4000), and the gradients
                // of the layers before it then differ by a whole term although both paths are right.
                let seed = 10 * batch as u64 + u64::from(train);
                let seeded = |shape: &[usize], seed| {
                    crate::seeded_randn(0.0, 1.0, shape, seed, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
                };
                let x = seeded(&[batch, 13, 60], seed);
                let r = seeded(&[batch, 128], seed + 1);
                let yf = fast.forward_t(&x, train).unwrap();
                let mut h = x.clone();
                for b in &slow.blocks {
                    let y = b.conv.forward_generic(&h, b.conv.weight(), b.conv.bias()).unwrap();
                    h = b.bn.forward_t(&y, train).unwrap().relu().unwrap();
                }
                let ys = h.mean(D::Minus1).unwrap();
                let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
                assert!(max_rel(&yf, &ys) < tol, "{dtype:?} batch {batch} train {train}: outputs");
                let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gs = (ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let (mut vf, mut vs) =
                    (vm_fast.data().lock().unwrap().clone(), vm_slow.data().lock().unwrap().clone());
                let mut names: Vec<String> = vf.keys().cloned().collect();
                names.sort();
                for name in names {
                    let (a, b) = (vf.remove(&name).unwrap(), vs.remove(&name).unwrap());
                    if name.contains("running") {
                        assert!(max_rel(a.as_tensor(), b.as_tensor()) < tol, "{dtype:?} {name}");
                        continue;
                    }
                    let (ga, gb) = (gf.get(a.as_tensor()).unwrap(), gs.get(b.as_tensor()).unwrap());
                    // Conv biases before train-mode BatchNorm have an exact gradient of 0.
                    let both_zero = train && name.ends_with(".0.bias");
                    let err = if both_zero { 0.0 } else { max_rel(ga, gb) };
                    assert!(
                        err < tol,
                        "{dtype:?} batch {batch} train {train}: gradient of {name} differs by {err}"
                    );
                }
            }
        }
    }
}
