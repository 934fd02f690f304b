//! [`EegEncoder`] and [`AudioEncoder`]: stacks of `Conv1d → BatchNorm1d → ReLU` blocks, then the mean over
//! time.

use candle_core::{D, ModuleT, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::conv::{Conv1d, Conv1dConfig};
use crate::error::{Error, Result};

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

const fn spec(out_channels: usize, kernel: usize, stride: usize, padding: usize) -> ConvSpec {
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

    /// The time length after every block, or `None` if some block gets an input shorter than its kernel.
    #[must_use]
    pub fn out_len(&self, len: usize) -> Option<usize> {
        self.convs().iter().try_fold(len, |l, c| c.out_len(l))
    }
}

/// Conv1d → BatchNorm1d → ReLU; tensor names `{i}.0.*` (conv) and `{i}.1.*` (BatchNorm) as in PyTorch's
/// `nn.Sequential`.
#[derive(Debug, Clone)]
struct Block {
    conv: Conv1d,
    bn: BatchNorm,
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = candle_core::Module::forward(&self.conv, x)?;
        self.bn.forward_t(&y, train)?.relu()
    }
}

/// The shared body of both encoders.
#[derive(Debug, Clone)]
struct ConvEncoder {
    cfg: EncoderConfig,
    blocks: Vec<Block>,
}

impl ConvEncoder {
    fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
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
        let (_, _, len) = x.dims3()?;
        if self.cfg.out_len(len).is_none() {
            let min = (1..=len.max(1) * 64).find(|&l| self.cfg.out_len(l).is_some()).unwrap_or(usize::MAX);
            return Err(Error::TooShort { layer: "encoder".into(), len, min });
        }
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward_t(&h, train)?;
        }
        Ok(h.mean(D::Minus1)?)
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
