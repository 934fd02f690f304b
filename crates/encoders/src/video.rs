//! [`VideoEncoder`]: a per-frame 2-D CNN shared across frames, then a temporal convolution over the frames.

use candle_core::{D, ModuleT, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::conv2d::Conv2d;
use crate::encoder::{BN_EPS, BN_MOMENTUM, ConvEncoder, EncoderConfig, LATENT_DIM, spec};
use crate::error::{Error, Result};

/// The video encoder: the per-frame 2-D blocks (one luma input channel) and the temporal encoder over
/// the frames, whose `in_channels` must equal the last frame block's output channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoEncoderConfig {
    /// Per-frame `Conv2d → BatchNorm2d → ReLU` blocks (square kernels) over one input channel (luma).
    pub frames: EncoderConfig,
    /// `Conv1d → BatchNorm1d → ReLU` blocks over the frames' pooled features.
    pub temporal: EncoderConfig,
}

impl Default for VideoEncoderConfig {
    /// Frames: (16, k3, s2, p1), (32, 3, 2, 1), (64, 3, 2, 1), then the spatial mean; over time:
    /// (128, k3, s1, p1): a 64×64 frame becomes 8×8 after the frame blocks, 25 frames stay 25 steps.
    fn default() -> Self {
        Self {
            frames: EncoderConfig {
                in_channels: 1,
                blocks: vec![spec(16, 3, 2, 1), spec(32, 3, 2, 1), spec(64, 3, 2, 1)],
            },
            temporal: EncoderConfig { in_channels: 64, blocks: vec![spec(LATENT_DIM, 3, 1, 1)] },
        }
    }
}

impl VideoEncoderConfig {
    /// The latent size.
    #[must_use]
    pub fn latent_dim(&self) -> usize {
        self.temporal.latent_dim()
    }

    fn validate(&self) -> Result<()> {
        if self.frames.blocks.is_empty() || self.frames.in_channels != 1 {
            return Err(Error::Config(format!(
                "the video encoder's frame blocks read one channel (luma) through at least one block: {:?}",
                self.frames
            )));
        }
        if self.temporal.in_channels != self.frames.latent_dim() {
            return Err(Error::Config(format!(
                "the temporal encoder reads {} channels, the last frame block gives {}",
                self.temporal.in_channels,
                self.frames.latent_dim()
            )));
        }
        Ok(())
    }
}

/// One `Conv2d → BatchNorm2d → ReLU` block; tensor names `{i}.0.*` and `{i}.1.*`.
#[derive(Debug, Clone)]
struct FrameBlock {
    conv: Conv2d,
    bn: BatchNorm,
}

impl FrameBlock {
    /// Training: batch statistics (running ones updated as PyTorch does). Evaluation: BatchNorm folded
    /// into the conv's weight and bias, ReLU fused into the conv.
    fn run(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let y = self.conv.try_forward(x)?;
            return Ok(self.bn.forward_t(&y, true)?.relu()?);
        }
        let Some((gamma, beta)) = self.bn.weight_and_bias() else {
            return Err(Error::Config("video encoder BatchNorm layers are affine".into()));
        };
        let scale = (gamma / (self.bn.running_var().detach() + self.bn.eps())?.sqrt()?)?;
        let weight = self.conv.weight().broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        let bias = (((self.conv.bias() - self.bn.running_mean().detach())? * &scale)? + beta)?;
        self.conv.forward_with(x, &weight, &bias, true)
    }
}

/// Video windows `(batch, frames, height, width)` of luma → latent `(batch, 128)`: every frame through
/// the same 2-D blocks and a spatial mean, then the temporal blocks over the frames and the mean over
/// time. Tensor names: `frames.{i}.{0,1}.*` and `temporal.convs.{i}.{0,1}.*`.
#[derive(Debug, Clone)]
pub struct VideoEncoder {
    cfg: VideoEncoderConfig,
    frames: Vec<FrameBlock>,
    temporal: ConvEncoder,
}

impl VideoEncoder {
    /// Builds the encoder under `vb`.
    ///
    /// # Errors
    /// An invalid config, or a candle error from the var builder.
    pub fn new(cfg: &VideoEncoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let bn_cfg = BatchNormConfig { eps: BN_EPS, remove_mean: true, affine: true, momentum: BN_MOMENTUM };
        let frames = cfg
            .frames
            .convs()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let vb = vb.pp("frames").pp(i.to_string());
                Ok(FrameBlock {
                    conv: Conv2d::new(c, vb.pp("0"))?,
                    bn: candle_nn::batch_norm(c.out_channels, bn_cfg, vb.pp("1"))?,
                })
            })
            .collect::<Result<_>>()?;
        let temporal = ConvEncoder::new(&cfg.temporal, vb.pp("temporal"))?;
        Ok(Self { cfg: cfg.clone(), frames, temporal })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &VideoEncoderConfig {
        &self.cfg
    }

    /// The temporal blocks' output `(batch, latent, steps)` and the frame count.
    fn features(&self, x: &Tensor, train: bool) -> Result<(Tensor, usize)> {
        let x = core_types::VideoBatch::new(x.clone(), None, None, None)?;
        let (batch, frames) = (x.batch(), x.frames());
        let (h, w) = x.frame_size();
        let min = self.cfg.frames.min_len();
        if h.min(w) < min {
            return Err(Error::TooShort { layer: "video frame blocks".into(), len: h.min(w), min });
        }
        let mut f = x.tensor().reshape((batch * frames, 1, h, w))?;
        for b in &self.frames {
            f = b.run(&f, train)?;
        }
        let c = f.dim(1)?;
        // (B·T, C, h', w') → (B·T, C) → (B, C, T).
        let pooled = f.flatten_from(2)?.mean(D::Minus1)?.reshape((batch, frames, c))?.transpose(1, 2)?;
        Ok((self.temporal.features(&pooled.contiguous()?, train)?, frames))
    }

    /// Encodes a batch; `train` selects batch statistics (and updates the running ones).
    ///
    /// # Errors
    /// [`Error::Shape`] for an input that is not `(batch, frames, height, width)`, [`Error::TooShort`] for
    /// frames or a clip too small for the kernels.
    pub fn encode(&self, x: &Tensor, train: bool) -> Result<core_types::Latent> {
        let (h, _) = self.features(x, train)?;
        Ok(core_types::Latent::new(h.mean(D::Minus1)?, self.cfg.latent_dim())?)
    }

    /// Encodes a batch and keeps its time axis: the sequence `(batch, steps, latent)` with each step's
    /// time in seconds for frames at `frame_rate` per second, and the pooled latent (the same numbers as
    /// [`Self::encode`]).
    ///
    /// # Errors
    /// As [`Self::encode`].
    pub fn encode_sequence(
        &self,
        x: &Tensor,
        frame_rate: f64,
        train: bool,
    ) -> Result<(core_types::Sequence, core_types::Latent)> {
        let (h, frames) = self.features(x, train)?;
        let d = self.cfg.latent_dim();
        let times = self.cfg.temporal.step_times(frames, frame_rate).unwrap_or_default();
        let latent = core_types::Latent::new(h.mean(D::Minus1)?, d)?;
        Ok((core_types::Sequence::new(h.transpose(1, 2)?, d, times)?, latent))
    }
}

impl ModuleT for VideoEncoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.encode(x, train).map(core_types::Latent::into_tensor).map_err(candle_core::Error::wrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::ConvSpec;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn encoder(dtype: DType) -> (VarMap, VideoEncoder) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let cfg = VideoEncoderConfig {
            frames: EncoderConfig {
                in_channels: 1,
                blocks: vec![
                    ConvSpec { out_channels: 3, kernel: 3, stride: 2, padding: 1 },
                    ConvSpec { out_channels: 4, kernel: 3, stride: 2, padding: 1 },
                ],
            },
            temporal: EncoderConfig {
                in_channels: 4,
                blocks: vec![ConvSpec { out_channels: 5, kernel: 3, stride: 1, padding: 1 }],
            },
        };
        let enc = VideoEncoder::new(&cfg, vb).unwrap();
        crate::init_pytorch_default(&varmap, 3).unwrap();
        (varmap, enc)
    }

    #[test]
    fn shapes_times_and_pooling() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let enc = VideoEncoder::new(&VideoEncoderConfig::default(), vb.pp("video_encoder")).unwrap();
        crate::init_pytorch_default(&varmap, 1).unwrap();
        let x = crate::seeded_randn(0.0, 1.0, &[2, 25, 64, 64], 1, &Device::Cpu).unwrap();
        let (seq, latent) = enc.encode_sequence(&x, 5.0, false).unwrap();
        assert_eq!((seq.batch(), seq.steps(), seq.dim()), (2, 25, 128));
        assert_eq!((latent.batch(), latent.dim()), (2, 128));
        // Frame f at f/5 s: the 5 s window's clock, like the EEG's and the audio's.
        assert!(seq.times().iter().enumerate().all(|(f, t)| (t - f as f64 / 5.0).abs() < 1e-12));
        let pooled = seq.tensor().mean(1).unwrap();
        let d = (pooled - latent.tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        for name in ["video_encoder.frames.2.0.weight", "video_encoder.temporal.convs.0.1.running_var"] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    }

    /// Every gradient of the whole encoder in training mode (2-D blocks, batch statistics, spatial and
    /// temporal means) matches central finite differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let (varmap, enc) = encoder(DType::F64);
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &crate::seeded_randn(0.0, 1.0, &[2, 4, 7, 6], 2, &dev).unwrap().to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        let r = crate::seeded_randn(0.0, 1.0, &[2, 5], 3, &dev).unwrap().to_dtype(DType::F64).unwrap();
        // Training mode updates running statistics but does not read them: the loss is a pure function.
        let loss = |xt: &Tensor| -> f64 {
            (enc.encode(xt, true).unwrap().into_tensor() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let y = enc.encode(x.as_tensor(), true).unwrap().into_tensor();
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| !n.contains("running"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.push(("input".into(), x.clone()));
        let eps = 1e-6;
        for (name, var) in vars {
            let analytic: Vec<f64> =
                grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base = var.as_tensor().copy().unwrap();
            let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
            // Conv biases before batch statistics have an exact gradient of 0; check a sample of entries.
            for i in (0..flat.len()).step_by(flat.len().div_ceil(12)) {
                let bump = |d: f64| {
                    let mut v = flat.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, base.dims(), &dev).unwrap()).unwrap();
                    let out = loss(x.as_tensor());
                    var.set(&base).unwrap();
                    out
                };
                let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
                let err = (analytic[i] - numeric).abs() / numeric.abs().max(1.0);
                assert!(err < 1e-6, "{name}[{i}]: analytic {} vs numeric {numeric}", analytic[i]);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (_, enc) = encoder(DType::F32);
        let dev = Device::Cpu;
        let rank3 = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
        assert!(
            matches!(enc.encode(&rank3, false), Err(Error::Shape(e)) if e.axis == core_types::Axis::Rank)
        );
        let tiny = Tensor::zeros((2, 4, 8, 1), DType::F32, &dev).unwrap();
        assert!(enc.encode(&tiny, false).is_ok(), "a 1-pixel side still fits kernel 3 with padding 1");
        let cfg = VideoEncoderConfig {
            temporal: EncoderConfig { in_channels: 9, ..enc.config().temporal.clone() },
            ..enc.config().clone()
        };
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
        assert!(matches!(VideoEncoder::new(&cfg, vb), Err(Error::Config(_))));
    }
}
