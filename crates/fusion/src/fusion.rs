//! [`Fusion`]: combines the latents of a set of modalities (EEG, audio, video), any of them absent per
//! sample, into one.

use candle_core::{D, DType, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use core_types::{FusionMode, Latent, Modality, Sequence, same_batch};
use encoders::{Dropout, Linear};
use serde::{Deserialize, Serialize};

use crate::attention::MultiHeadAttention;
use crate::error::{Error, Result};
use crate::temporal::Temporal;

/// Settings of the fusion layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// How the latents are combined.
    pub mode: FusionMode,
    /// Size of each latent and of the output (128).
    pub latent_dim: usize,
    /// Dropout after the output projection (0.3).
    pub dropout: f32,
    /// Tokens each latent is cut into for cross-attention (8 tokens of 16).
    pub tokens: usize,
    /// Attention heads (4).
    pub heads: usize,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// The modalities fused, in this order (EEG, audio). Tensor names and the layout of concatenations
    /// follow it.
    #[serde(default = "eeg_and_audio")]
    pub modalities: Vec<Modality>,
    /// Whether `concat` learns an embedding (`{modality}_absent`, initialised at 0) to put in the slot of an
    /// absent modality; without it the slot holds zeros. Off in the reference models (their tensors stay
    /// the reference's); on for models trained with absent modalities.
    #[serde(default)]
    pub absent_embeddings: bool,
    /// Width of the `temporal` mode's transformer (64).
    #[serde(default = "temporal_dim")]
    pub temporal_dim: usize,
    /// Layers of the `temporal` mode's transformer (2).
    #[serde(default = "temporal_layers")]
    pub temporal_layers: usize,
    /// Weight of the `adaptive` router's balance penalty (`K · Σₖ mean weightₖ²`, 1 when the batch uses the
    /// K modes alike, K when it uses one). 0 by default: the router starts uniform, and on the small
    /// per-subject training sets of EAV a penalty towards uniform use mostly keeps it there; raise it
    /// (0.01–0.1) when one mode takes over early.
    #[serde(default)]
    pub router_balance: f32,
}

fn temporal_dim() -> usize {
    64
}

fn temporal_layers() -> usize {
    2
}

fn eeg_and_audio() -> Vec<Modality> {
    vec![Modality::Eeg, Modality::Audio]
}

impl Default for FusionConfig {
    /// The reference: concat of EEG and audio, 128-d, dropout 0.3, 8 tokens × 16 dims, 4 heads; for
    /// `temporal`, 2 layers of width 64.
    fn default() -> Self {
        Self {
            mode: FusionMode::Concat,
            latent_dim: 128,
            dropout: 0.3,
            tokens: 8,
            heads: 4,
            seed: 0,
            modalities: eeg_and_audio(),
            absent_embeddings: false,
            temporal_dim: temporal_dim(),
            temporal_layers: temporal_layers(),
            router_balance: 0.0,
        }
    }
}

/// One modality's encoded batch, the input of [`Fusion::fuse_set`].
#[derive(Debug, Clone)]
pub struct ModalityInput {
    /// Which modality.
    pub modality: Modality,
    /// Its pooled latent `(B, D)`.
    pub latent: Latent,
    /// Its sequence before pooling `(B, T, D)`, when the encoder kept it.
    pub sequence: Option<Sequence>,
    /// `(B)`, 1 where the sample has this modality and 0 where it is absent; `None`: present everywhere.
    pub present: Option<Tensor>,
}

impl ModalityInput {
    /// A modality present in every sample of the batch.
    #[must_use]
    pub fn new(modality: Modality, latent: Latent) -> Self {
        Self { modality, latent, sequence: None, present: None }
    }

    /// With a presence mask `(B)` of 0 (absent) and 1 (present).
    #[must_use]
    pub fn with_presence(mut self, present: Tensor) -> Self {
        self.present = Some(present);
        self
    }

    /// With the sequence the latent was pooled from.
    #[must_use]
    pub fn with_sequence(mut self, sequence: Sequence) -> Self {
        self.sequence = Some(sequence);
        self
    }
}

/// Attention of one modality's tokens (queries) over another's (keys), `(B, heads, tokens, tokens)`.
#[derive(Debug, Clone)]
pub struct AttentionMap {
    /// The mode whose layer attended (`cross_attention` or `temporal`; an adaptive layer reports both).
    pub mode: FusionMode,
    /// The attending modality.
    pub query: Modality,
    /// The modality attended to.
    pub key: Modality,
    /// The weights; each row sums to 1.
    pub weights: Tensor,
}

#[derive(Debug, Clone)]
enum Kind {
    Concat {
        proj: Linear,
    },
    Gated {
        gate_fc: Linear,
        proj_fc: Linear,
    },
    /// One attention layer per ordered pair of modalities (query, key), in `modalities` order.
    CrossAttention {
        pairs: Vec<(usize, usize, MultiHeadAttention)>,
        blend_logits: Tensor,
        proj: Linear,
    },
    Temporal(Box<Temporal>),
    /// Experts of every other mode (names under `{mode}.`) and a router over them.
    Adaptive {
        experts: Vec<(FusionMode, Kind)>,
        router_in: Linear,
        router_out: Linear,
    },
}

/// One batch as the modes see it: scaled latents `(B, D)` in `modalities` order, the masks, the inputs.
#[derive(Clone, Copy)]
struct Batch<'a> {
    xs: &'a [Tensor],
    masks: Option<&'a Masks>,
    slots: &'a [Option<&'a ModalityInput>],
    batch: usize,
    /// Training: the attention of the temporal mode holds its weights for the backward pass.
    train: bool,
}

/// What one mode computed.
struct KindOutput {
    pre: Tensor,
    gates: Option<Tensor>,
    attention: Vec<AttentionMap>,
    router: Option<Tensor>,
}

impl KindOutput {
    fn plain(pre: Tensor) -> Self {
        Self { pre, gates: None, attention: Vec::new(), router: None }
    }
}

/// The fusion layer over `N` modalities. Each latent is scaled per channel, `xᵢ = latentᵢ ⊙ {modality}_scale`,
/// then the mode combines them:
/// - concat: `Dropout(ReLU(Linear(N·D → D)([x₁, …, x_N])))`;
/// - gated: `c = [x₁, …, x_N]`, `g = σ(Linear(N·D → N·D)(c))`, `Dropout(ReLU(Linear(N·D → D)(c ⊙ g)))`;
/// - cross_attention: each `xᵢ` as `tokens` tokens; `xᵢ' = xᵢ + mean over j ≠ i of MHA(xᵢ → xⱼ)`;
///   `w = softmax(blend_logits)` (N); `Dropout(ReLU(Linear(D → D)(Σ wᵢ·xᵢ')))`;
/// - temporal: a cross-modal transformer over the scaled *sequences* (see [`ModalityInput::sequence`]):
///   each modality's steps attend to the others' on one clock of seconds, then self-attention and a
///   feed-forward block, `temporal_layers` times; the mean over time and present modalities is projected
///   to `D`, then ReLU and dropout;
/// - adaptive: a router `softmax(Linear(64 → 4)(ReLU(Linear(N·D → 64)([x₁, …, x_N]))))` per sample over
///   concat, cross_attention, gated and temporal ([`ADAPTIVE_EXPERTS`], each with its own layers under
///   `{mode}.`), whose weights mix the four modes' `ReLU` outputs; then dropout. With `router_balance` > 0
///   [`Inspection::aux_loss`] holds a balance penalty for the training loss.
///
/// With EEG and audio this is the reference model exactly. A sample whose modality `i` is absent gets
/// nothing from it: concat puts `{modality}_absent` (or zeros) in its slot; gated zeroes its slot of `c`
/// and rescales `c ⊙ g` by `N / present`; cross_attention drops the pairs whose key is absent (the mean runs
/// over the present ones) and renormalises `w` over the present modalities; temporal likewise drops the
/// absent modalities' steps as keys and averages over the present modalities only.
///
/// Tensor names: `{modality}_scale`, `{modality}_absent` (concat with `absent_embeddings`); `proj.*`
/// (concat, cross_attention), `gate_fc.*`, `proj_fc.*` (gated), `attn_{q}2{k}.*` for every ordered pair
/// with one-letter tags (`attn_e2a`: EEG attends to audio) and `blend_logits` (cross_attention); temporal:
/// `{modality}_in.*`, `layers.{l}.{modality}.{norm1,self_attn,norm2,norm3,ff1,ff2}.*`, `layers.{l}.attn_{q}2{k}.*`,
/// `{modality}_out_norm.*`, `out.*`; adaptive: `router_in.*`, `router_out.*` and each expert's names under
/// `concat.`, `cross_attention.`, `gated.`, `temporal.`.
///
/// # Shapes
/// `N × (B, D)` → `(B, D)`.
#[derive(Debug, Clone)]
pub struct Fusion {
    cfg: FusionConfig,
    scales: Vec<Tensor>,
    absent: Vec<Option<Tensor>>,
    dropout: Dropout,
    kind: Kind,
}

/// What [`Fusion::forward_inspect`] exposes besides the output.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The fused latent `(B, D)`.
    pub fused: Tensor,
    /// Gate values in [0, 1], `(B, N·D)` in `modalities` order (gated mode); 0 in an absent modality's slot.
    pub gates: Option<Tensor>,
    /// Attention maps of every ordered pair of modalities: `(B, heads, tokens, tokens)` (cross_attention)
    /// or the last layer's `(B, heads, Tq, Tk)` over time steps (temporal). A sample's maps for an absent
    /// key modality are computed but unused.
    pub attention: Vec<AttentionMap>,
    /// The router's weights `(B, 4)` over [`ADAPTIVE_EXPERTS`] (adaptive).
    pub router: Option<Tensor>,
    /// The router's balance penalty, to add to the training loss (adaptive with `router_balance` > 0).
    pub aux_loss: Option<Tensor>,
}

fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // 1 / (1 + e^(−x)) from elementary ops, which all record gradients.
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// The presence masks of a batch, `(B, 1)` per modality, and the number present per sample `(B, 1)`.
struct Masks {
    each: Vec<Tensor>,
    count: Tensor,
}

/// The modes an `adaptive` layer routes between, in the order of its router's outputs.
pub const ADAPTIVE_EXPERTS: [FusionMode; 4] =
    [FusionMode::Concat, FusionMode::CrossAttention, FusionMode::Gated, FusionMode::Temporal];

/// Hidden units of the adaptive router.
const ROUTER_HIDDEN: usize = 64;

/// The layers of `mode` under `vb` (an adaptive layer's experts under `vb.pp(mode)`).
fn build_kind(mode: FusionMode, cfg: &FusionConfig, vb: &VarBuilder) -> Result<Kind> {
    let d = cfg.latent_dim;
    let n = cfg.modalities.len();
    Ok(match mode {
        FusionMode::Concat => Kind::Concat { proj: Linear::new(n * d, d, vb.pp("proj"))? },
        FusionMode::Gated => Kind::Gated {
            gate_fc: Linear::new(n * d, n * d, vb.pp("gate_fc"))?,
            proj_fc: Linear::new(n * d, d, vb.pp("proj_fc"))?,
        },
        FusionMode::CrossAttention => {
            let fits = cfg.tokens > 0
                && d.is_multiple_of(cfg.tokens)
                && cfg.heads > 0
                && (d / cfg.tokens).is_multiple_of(cfg.heads);
            if !fits {
                return Err(Error::Config(format!(
                    "latent_dim {d} must split into {} tokens whose size is divisible by {} heads",
                    cfg.tokens, cfg.heads
                )));
            }
            let token_dim = d / cfg.tokens;
            let mut pairs = Vec::new();
            for (i, q) in cfg.modalities.iter().enumerate() {
                for (j, k) in cfg.modalities.iter().enumerate().filter(|(j, _)| *j != i) {
                    let name = format!("attn_{}2{}", q.tag(), k.tag());
                    pairs.push((i, j, MultiHeadAttention::new(token_dim, cfg.heads, vb.pp(name))?));
                }
            }
            Kind::CrossAttention {
                pairs,
                blend_logits: vb.get_with_hints(n, "blend_logits", candle_nn::Init::Const(0.0))?,
                proj: Linear::new(d, d, vb.pp("proj"))?,
            }
        }
        FusionMode::Adaptive => {
            let mut experts = Vec::new();
            for &m in &ADAPTIVE_EXPERTS {
                experts.push((m, build_kind(m, cfg, &vb.pp(m.as_str()))?));
            }
            Kind::Adaptive {
                experts,
                router_in: Linear::new(n * d, ROUTER_HIDDEN, vb.pp("router_in"))?,
                router_out: Linear::new(ROUTER_HIDDEN, ADAPTIVE_EXPERTS.len(), vb.pp("router_out"))?,
            }
        }
        FusionMode::Temporal => {
            if cfg.temporal_dim == 0 || cfg.heads == 0 || !cfg.temporal_dim.is_multiple_of(2 * cfg.heads) {
                return Err(Error::Config(format!(
                    "temporal_dim {} must be a positive multiple of 2 × {} heads",
                    cfg.temporal_dim, cfg.heads
                )));
            }
            Kind::Temporal(Box::new(Temporal::new(
                &cfg.modalities,
                d,
                cfg.temporal_dim,
                cfg.temporal_layers,
                cfg.heads,
                vb,
            )?))
        }
    })
}

impl Fusion {
    /// Builds the layer for `cfg.mode` under `vb`.
    ///
    /// # Errors
    /// [`Error::Config`] for no or repeated modalities, or when `latent_dim` is not divisible into `tokens`
    /// tokens of a size divisible by `heads`; candle errors from the var builder.
    pub fn new(cfg: &FusionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.latent_dim;
        let n = cfg.modalities.len();
        if n == 0 {
            return Err(Error::Config("no modalities to fuse".into()));
        }
        if let Some(m) =
            cfg.modalities.iter().enumerate().find_map(|(i, m)| cfg.modalities[..i].contains(m).then_some(m))
        {
            return Err(Error::Config(format!("modality {m} listed twice")));
        }
        let ones = candle_nn::Init::Const(1.0);
        let scales = cfg
            .modalities
            .iter()
            .map(|m| vb.get_with_hints(d, &format!("{m}_scale"), ones))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let absent = cfg
            .modalities
            .iter()
            .map(|m| {
                (cfg.absent_embeddings && matches!(cfg.mode, FusionMode::Concat | FusionMode::Adaptive))
                    .then(|| vb.get_with_hints(d, &format!("{m}_absent"), candle_nn::Init::Const(0.0)))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let kind = build_kind(cfg.mode, cfg, &vb)?;
        let dropout = Dropout::new(cfg.dropout, cfg.seed ^ 0xF0_5105);
        Ok(Self { cfg: cfg.clone(), scales, absent, dropout, kind })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &FusionConfig {
        &self.cfg
    }

    /// The per-channel scale `(D)` of `modality`, when it is one of the fused modalities.
    #[must_use]
    pub fn scale(&self, modality: Modality) -> Option<&Tensor> {
        self.cfg.modalities.iter().position(|m| *m == modality).map(|i| &self.scales[i])
    }

    /// The per-channel EEG scale `(D)` (read-only view of the parameter).
    ///
    /// # Panics
    /// When EEG is not among the fused modalities.
    #[must_use]
    pub fn eeg_scale(&self) -> &Tensor {
        self.scale(Modality::Eeg).expect("EEG is not a fused modality of this layer")
    }

    /// The per-channel audio scale `(D)`.
    ///
    /// # Panics
    /// When audio is not among the fused modalities.
    #[must_use]
    pub fn audio_scale(&self) -> &Tensor {
        self.scale(Modality::Audio).expect("audio is not a fused modality of this layer")
    }

    /// The dropout layer (its generator state belongs in a checkpoint).
    #[must_use]
    pub fn dropout(&self) -> &Dropout {
        &self.dropout
    }

    /// The blend weights `softmax(blend_logits)` `(N)` in `modalities` order (cross_attention only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes.
    pub fn blend_weights(&self) -> Result<Tensor> {
        match &self.kind {
            Kind::CrossAttention { blend_logits, .. } => Ok(candle_nn::ops::softmax(blend_logits, 0)?),
            _ => Err(self.wrong_mode("blend weights", FusionMode::CrossAttention)),
        }
    }

    fn wrong_mode(&self, what: &'static str, needs: FusionMode) -> Error {
        Error::WrongMode { what, needs, mode: self.cfg.mode }
    }

    /// Fuses an EEG and an audio latent, both present in every sample (the reference model's call).
    ///
    /// # Errors
    /// [`Error::Shape`] when the latents are not both `(B, D)` with the same `B`; [`Error::Input`] when the
    /// layer does not fuse exactly EEG and audio.
    pub fn fuse(&self, eeg: &Latent, audio: &Latent, train: bool) -> Result<Latent> {
        Ok(Latent::new(self.forward_inspect(eeg, audio, train)?.fused, self.cfg.latent_dim)?)
    }

    /// [`Fusion::fuse`] with the gate values or attention weights along with the output.
    ///
    /// # Errors
    /// As [`Fusion::fuse`].
    pub fn forward_inspect(&self, eeg: &Latent, audio: &Latent, train: bool) -> Result<Inspection> {
        if self.cfg.modalities != eeg_and_audio() {
            return Err(Error::Input(format!(
                "this layer fuses {:?}; use fuse_set for anything but EEG and audio",
                self.cfg.modalities
            )));
        }
        self.fuse_set(
            &[
                ModalityInput::new(Modality::Eeg, eeg.clone()),
                ModalityInput::new(Modality::Audio, audio.clone()),
            ],
            train,
        )
    }

    /// Fuses a set of modalities, each with its presence mask. A modality of the layer that `inputs` lacks
    /// is absent from every sample.
    ///
    /// # Errors
    /// [`Error::Input`] for no inputs, a modality given twice or not fused by this layer, a mask that is not
    /// `(B)` of 0 and 1, or a sample with no modality present; [`Error::Shape`] for latents that are not
    /// `(B, D)` with one `B`.
    pub fn fuse_set(&self, inputs: &[ModalityInput], train: bool) -> Result<Inspection> {
        let d = self.cfg.latent_dim;
        let Some(first) = inputs.first() else { return Err(Error::Input("no modality to fuse".into())) };
        let batch = first.latent.batch();
        let mut slots: Vec<Option<&ModalityInput>> = vec![None; self.cfg.modalities.len()];
        for input in inputs {
            let i = self.cfg.modalities.iter().position(|m| *m == input.modality).ok_or_else(|| {
                Error::Input(format!("this layer fuses {:?}, not {}", self.cfg.modalities, input.modality))
            })?;
            if slots[i].is_some() {
                return Err(Error::Input(format!("modality {} given twice", input.modality)));
            }
            Latent::new(input.latent.tensor().clone(), d)?;
            same_batch("latent", batch, input.latent.tensor())?;
            slots[i] = Some(input);
        }
        let device = first.latent.tensor().device();
        let dtype = first.latent.tensor().dtype();
        let masks = self.masks(&slots, batch)?;
        let xs = slots
            .iter()
            .zip(&self.scales)
            .map(|(slot, scale)| match slot {
                Some(s) => Ok(s.latent.tensor().broadcast_mul(scale)?),
                None => Ok(Tensor::zeros((batch, d), dtype, device)?),
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self
            .run_kind(&self.kind, &Batch { xs: &xs, masks: masks.as_ref(), slots: &slots, batch, train })?;
        let fused = self.dropout.forward_t(&out.pre.relu()?, train)?;
        let aux_loss = match &out.router {
            Some(w) if self.cfg.router_balance > 0.0 => {
                // Switch-style balance: K · Σₖ (mean weight of mode k)², 1 when the batch uses every mode alike.
                let k = w.dim(1)? as f64;
                Some(((w.mean(0)?.sqr()?.sum_all()? * k)? * f64::from(self.cfg.router_balance))?)
            }
            _ => None,
        };
        Ok(Inspection { fused, gates: out.gates, attention: out.attention, router: out.router, aux_loss })
    }

    /// The pre-activation output of `kind` on one batch (every mode but `adaptive` ends in a projection;
    /// `adaptive` returns its router's mix of its experts' ReLU outputs).
    fn run_kind(&self, kind: &Kind, input: &Batch<'_>) -> Result<KindOutput> {
        let Batch { xs, masks, slots, batch, train } = *input;
        let d = self.cfg.latent_dim;
        let (device, dtype) = (xs[0].device(), xs[0].dtype());
        Ok(match kind {
            Kind::Concat { proj } => {
                let parts = match masks {
                    None => xs.to_vec(),
                    Some(m) => xs
                        .iter()
                        .zip(&m.each)
                        .zip(&self.absent)
                        .map(|((x, m), absent)| {
                            let kept = x.broadcast_mul(m)?;
                            Ok(match absent {
                                Some(a) => (kept + m.affine(-1.0, 1.0)?.broadcast_mul(&a.unsqueeze(0)?)?)?,
                                None => kept,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?,
                };
                KindOutput::plain(proj.forward(&Tensor::cat(&parts, D::Minus1)?)?)
            }
            Kind::Gated { gate_fc, proj_fc } => {
                let parts = match masks {
                    None => xs.to_vec(),
                    Some(m) => xs
                        .iter()
                        .zip(&m.each)
                        .map(|(x, m)| x.broadcast_mul(m))
                        .collect::<candle_core::Result<_>>()?,
                };
                let c = Tensor::cat(&parts, D::Minus1)?;
                let g = sigmoid(&gate_fc.forward(&c)?)?;
                let mut h = (&c * &g)?;
                let mut shown = g;
                if let Some(m) = masks {
                    let n = self.cfg.modalities.len() as f64;
                    h = h.broadcast_mul(&(m.count.recip()? * n)?)?;
                    let slot_mask = Tensor::cat(
                        &m.each
                            .iter()
                            .map(|m| m.broadcast_as((batch, d)))
                            .collect::<candle_core::Result<Vec<_>>>()?,
                        D::Minus1,
                    )?;
                    shown = (shown * slot_mask)?;
                }
                KindOutput { gates: Some(shown), ..KindOutput::plain(proj_fc.forward(&h)?) }
            }
            Kind::CrossAttention { pairs, blend_logits, proj } => {
                let (t, td) = (self.cfg.tokens, d / self.cfg.tokens);
                let tokens =
                    xs.iter().map(|x| x.reshape((batch, t, td))).collect::<candle_core::Result<Vec<_>>>()?;
                let mut ctx: Vec<Option<Tensor>> = vec![None; xs.len()];
                let mut maps = Vec::with_capacity(pairs.len());
                for (i, j, mha) in pairs {
                    let (c, w) = mha.forward(&tokens[*i], &tokens[*j])?;
                    let c = match masks {
                        Some(m) => c.broadcast_mul(&m.each[*j].unsqueeze(2)?)?,
                        None => c,
                    };
                    ctx[*i] = Some(match ctx[*i].take() {
                        Some(acc) => (acc + c)?,
                        None => c,
                    });
                    maps.push(AttentionMap {
                        mode: FusionMode::CrossAttention,
                        query: self.cfg.modalities[*i],
                        key: self.cfg.modalities[*j],
                        weights: w,
                    });
                }
                let others = xs.len().saturating_sub(1);
                let mut mixed: Option<Tensor> = None;
                let w = candle_nn::ops::softmax(blend_logits, 0)?;
                let w = match masks {
                    None => w.unsqueeze(0)?,
                    Some(m) => {
                        let present = Tensor::cat(&m.each, 1)?; // (B, N)
                        let raw = present.broadcast_mul(&w.unsqueeze(0)?)?;
                        raw.broadcast_div(&raw.sum_keepdim(1)?)?
                    }
                };
                for (i, (tok, c)) in tokens.iter().zip(ctx).enumerate() {
                    let c = match (c, masks) {
                        (None, _) => None,
                        // The mean over the present key modalities (a sample with none keeps its tokens).
                        (Some(c), Some(m)) => {
                            let n = (m.count.broadcast_sub(&m.each[i])?.maximum(1.0)?).unsqueeze(2)?;
                            Some(c.broadcast_div(&n)?)
                        }
                        (Some(c), None) if others > 1 => Some((c / others as f64)?),
                        (Some(c), None) => Some(c),
                    };
                    let xi = match c {
                        Some(c) => (tok + c)?.reshape((batch, d))?,
                        None => tok.reshape((batch, d))?,
                    };
                    let term = xi.broadcast_mul(&w.narrow(1, i, 1)?)?;
                    mixed = Some(match mixed.take() {
                        Some(acc) => (acc + term)?,
                        None => term,
                    });
                }
                let mixed = mixed.ok_or_else(|| Error::Input("no modality to fuse".into()))?;
                KindOutput { attention: maps, ..KindOutput::plain(proj.forward(&mixed)?) }
            }
            Kind::Adaptive { experts, router_in, router_out } => {
                let parts = match masks {
                    None => xs.to_vec(),
                    Some(m) => xs
                        .iter()
                        .zip(&m.each)
                        .map(|(x, m)| x.broadcast_mul(m))
                        .collect::<candle_core::Result<_>>()?,
                };
                let hidden = router_in.forward(&Tensor::cat(&parts, D::Minus1)?)?.relu()?;
                let weights = candle_nn::ops::softmax(&router_out.forward(&hidden)?, D::Minus1)?;
                let mut mixed: Option<Tensor> = None;
                let mut attention = Vec::new();
                let mut gates = None;
                for (k, (_, expert)) in experts.iter().enumerate() {
                    let out = self.run_kind(expert, input)?;
                    let term = out.pre.relu()?.broadcast_mul(&weights.narrow(1, k, 1)?)?;
                    mixed = Some(match mixed.take() {
                        Some(acc) => (acc + term)?,
                        None => term,
                    });
                    attention.extend(out.attention);
                    gates = gates.or(out.gates);
                }
                let pre = mixed.ok_or_else(|| Error::Input("an adaptive layer without experts".into()))?;
                KindOutput { pre, gates, attention, router: Some(weights) }
            }
            Kind::Temporal(temporal) => {
                let placeholder = [0.0];
                let mut seqs = Vec::with_capacity(slots.len());
                let mut times: Vec<&[f64]> = Vec::with_capacity(slots.len());
                for ((slot, scale), m) in slots.iter().zip(&self.scales).zip(&self.cfg.modalities) {
                    match slot {
                        Some(s) => {
                            let seq = s.sequence.as_ref().ok_or_else(|| {
                                Error::Input(format!(
                                    "the temporal mode needs the sequence of {m}, not only its latent"
                                ))
                            })?;
                            Sequence::new(seq.tensor().clone(), d, seq.times().to_vec())?;
                            same_batch("sequence", batch, seq.tensor())?;
                            seqs.push(crate::graph_ops::scale_channels(seq.tensor(), scale)?);
                            times.push(seq.times());
                        }
                        None => {
                            seqs.push(Tensor::zeros((batch, 1, d), dtype, device)?);
                            times.push(&placeholder);
                        }
                    }
                }
                let (pre, maps) =
                    temporal.forward(&seqs, &times, masks.map(|m| (m.each.as_slice(), &m.count)), train)?;
                let maps = maps
                    .into_iter()
                    .map(|(i, j, weights)| AttentionMap {
                        mode: FusionMode::Temporal,
                        query: self.cfg.modalities[i],
                        key: self.cfg.modalities[j],
                        weights,
                    })
                    .collect();
                KindOutput { attention: maps, ..KindOutput::plain(pre) }
            }
        })
    }

    /// The masks of a batch, or `None` when every modality is present in every sample (the reference path,
    /// computed without masks).
    fn masks(&self, slots: &[Option<&ModalityInput>], batch: usize) -> Result<Option<Masks>> {
        if slots.iter().all(|s| s.is_some_and(|s| s.present.is_none())) {
            return Ok(None);
        }
        let (device, dtype) = slots
            .iter()
            .flatten()
            .next()
            .map(|s| (s.latent.tensor().device().clone(), s.latent.tensor().dtype()))
            .ok_or_else(|| Error::Input("no modality to fuse".into()))?;
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(slots.len());
        for slot in slots {
            let v = match slot {
                None => vec![0.0; batch],
                Some(s) => match &s.present {
                    None => vec![1.0; batch],
                    Some(p) => {
                        if p.dims() != [batch] {
                            return Err(Error::Input(format!(
                                "presence mask of {} is {:?}, expected [{batch}]",
                                s.modality,
                                p.dims()
                            )));
                        }
                        let v: Vec<f32> = p.to_dtype(DType::F32)?.to_vec1()?;
                        if let Some(x) = v.iter().find(|x| **x != 0.0 && **x != 1.0) {
                            return Err(Error::Input(format!(
                                "presence mask of {} holds {x}, not 0 or 1",
                                s.modality
                            )));
                        }
                        v
                    }
                },
            };
            values.push(v);
        }
        if let Some(b) = (0..batch).find(|&b| values.iter().all(|v| v[b] == 0.0)) {
            return Err(Error::Input(format!("sample {b} of the batch has no modality present")));
        }
        let each = values
            .into_iter()
            .map(|v| Tensor::from_vec(v, (batch, 1), &device)?.to_dtype(dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let count = each.iter().skip(1).try_fold(each[0].clone(), |acc, m| acc + m)?;
        Ok(Some(Masks { each, count }))
    }

    /// Gate values in [0, 1], `(B, 2D)` (gated only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes; shape errors as [`Fusion::fuse`].
    pub fn gate_values(&self, eeg: &Latent, audio: &Latent) -> Result<Tensor> {
        self.forward_inspect(eeg, audio, false)?
            .gates
            .ok_or_else(|| self.wrong_mode("gate values", FusionMode::Gated))
    }

    /// Attention weights (EEG → audio, audio → EEG), `(B, heads, tokens, tokens)` each (cross_attention only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes; shape errors as [`Fusion::fuse`].
    pub fn attention_weights(&self, eeg: &Latent, audio: &Latent) -> Result<(Tensor, Tensor)> {
        let maps = self.forward_inspect(eeg, audio, false)?.attention;
        let find = |q: Modality, k: Modality| {
            maps.iter().find(|m| m.query == q && m.key == k).map(|m| m.weights.clone())
        };
        find(Modality::Eeg, Modality::Audio)
            .zip(find(Modality::Audio, Modality::Eeg))
            .ok_or_else(|| self.wrong_mode("attention weights", FusionMode::CrossAttention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use candle_nn::VarMap;
    use proptest::prelude::*;

    fn build(mode: FusionMode, seed: u64) -> (VarMap, Fusion) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let f = Fusion::new(&FusionConfig { mode, ..FusionConfig::default() }, vb).unwrap();
        encoders::init_pytorch_default(&varmap, seed).unwrap();
        (varmap, f)
    }

    fn latent(batch: usize, seed: u64) -> Latent {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..batch * 128)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Latent::new(Tensor::from_vec(v, (batch, 128), &Device::Cpu).unwrap(), 128).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The modes that fuse pooled latents (the two-modality `fuse` call); `temporal` and `adaptive` (one of
    /// whose experts is temporal) need sequences.
    fn pooled() -> Vec<FusionMode> {
        FusionMode::ALL
            .iter()
            .copied()
            .filter(|m| !matches!(m, FusionMode::Temporal | FusionMode::Adaptive))
            .collect()
    }

    fn mode() -> impl Strategy<Value = FusionMode> {
        prop::sample::select(pooled())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn shapes_ranges_and_gradients(mode in mode(), batch in 1usize..17, seed in any::<u64>()) {
            let (varmap, f) = build(mode, seed);
            let (e, a) = (latent(batch, seed), latent(batch, seed ^ 1));
            let out = f.forward_inspect(&e, &a, true).unwrap();
            prop_assert_eq!(out.fused.dims(), &[batch, 128]);
            prop_assert!(max_abs(&out.fused).is_finite());
            if let Some(g) = &out.gates {
                prop_assert_eq!(g.dims(), &[batch, 256]);
                let lo = g.flatten_all().unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(lo >= 0.0 && max_abs(g) <= 1.0);
            }
            prop_assert_eq!(out.attention.len(), if mode == FusionMode::CrossAttention { 2 } else { 0 });
            {
                for w in out.attention.iter().map(|m| &m.weights) {
                    prop_assert_eq!(w.dims(), &[batch, 4, 8, 8]);
                    let dev = (w.sum(3).unwrap() - 1.0).unwrap();
                    prop_assert!(max_abs(&dev) < 1e-5, "attention rows must sum to 1");
                }
            }
            // Every fusion parameter receives a finite, non-zero gradient.
            let loss = out.fused.sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{mode}: no gradient for {name}"));
                let m = max_abs(g);
                prop_assert!(m.is_finite() && m > 0.0, "{} {}: gradient max {}", mode, name, m);
            }
        }

        #[test]
        fn a_zero_scale_removes_that_channel(mode in mode(), channel in 0usize..128, audio in any::<bool>(), seed in any::<u64>()) {
            let (varmap, f) = build(mode, seed);
            let name = if audio { "audio_scale" } else { "eeg_scale" };
            let mut scale = vec![1.0f32; 128];
            scale[channel] = 0.0;
            varmap.data().lock().unwrap()[name].set(&Tensor::new(scale, &Device::Cpu).unwrap()).unwrap();
            let (e, a) = (latent(3, seed), latent(3, seed ^ 1));
            let base = f.fuse(&e, &a, false).unwrap().into_tensor();
            let mut bump = vec![0.0f32; 128];
            bump[channel] = 5.0;
            let bump = Tensor::new(bump, &Device::Cpu).unwrap();
            let shifted = |l: &Latent| Latent::new(l.tensor().broadcast_add(&bump).unwrap(), 128).unwrap();
            let moved = if audio { f.fuse(&e, &shifted(&a), false) } else { f.fuse(&shifted(&e), &a, false) };
            let d = max_abs(&(moved.unwrap().into_tensor() - &base).unwrap());
            prop_assert!(d == 0.0, "channel {} of {} still changes the output by {}", channel, name, d);
            // …while with its scale at 1 it does matter.
            let (_, g) = build(mode, seed);
            let moved = if audio { g.fuse(&e, &shifted(&a), false) } else { g.fuse(&shifted(&e), &a, false) };
            let d = max_abs(&(moved.unwrap().into_tensor() - g.fuse(&e, &a, false).unwrap().into_tensor()).unwrap());
            prop_assert!(d > 0.0);
        }
    }

    const THREE: [Modality; 3] = [Modality::Eeg, Modality::Audio, Modality::Video];

    /// A layer over `modalities` in `dtype`, initialised from `seed`, with non-trivial scales, blend
    /// logits and absent embeddings.
    fn build_set(mode: FusionMode, modalities: &[Modality], dtype: DType, seed: u64) -> (VarMap, Fusion) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let cfg = FusionConfig {
            mode,
            modalities: modalities.to_vec(),
            absent_embeddings: true,
            dropout: 0.0,
            ..FusionConfig::default()
        };
        let f = Fusion::new(&cfg, vb).unwrap();
        encoders::init_pytorch_default(&varmap, seed).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with("_scale") || name.ends_with("_absent") || name == "blend_logits" {
                let n = var.elem_count() as u64;
                let v: Vec<f64> = (0..n).map(|i| ((i * 37 + seed % 97) % 17) as f64 / 10.0 - 0.6).collect();
                var.set(&Tensor::new(v, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
            }
        }
        (varmap, f)
    }

    /// Steps of each modality's test sequence: different rates on one clock.
    fn steps(m: Modality) -> usize {
        match m {
            Modality::Eeg => 3,
            Modality::Audio => 5,
            Modality::Video => 2,
        }
    }

    /// The raw tensors of a set: latent `(B, 128)` then sequence `(B, T, 128)` of each modality.
    fn raw(modalities: &[Modality], batch: usize, seed: u64, dtype: DType) -> Vec<Tensor> {
        modalities
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let s = seed + 10 * i as u64;
                let l = latent(batch, s).into_tensor();
                let q = Tensor::cat(
                    &(0..steps(*m))
                        .map(|t| latent(batch, s + 1 + t as u64).into_tensor().unsqueeze(1).unwrap())
                        .collect::<Vec<_>>(),
                    1,
                )
                .unwrap();
                [l.to_dtype(dtype).unwrap(), q.to_dtype(dtype).unwrap()]
            })
            .collect()
    }

    fn assemble(modalities: &[Modality], raw: &[Tensor], presence: &[Vec<f32>]) -> Vec<ModalityInput> {
        modalities
            .iter()
            .zip(presence)
            .enumerate()
            .map(|(i, (m, p))| {
                let n = steps(*m);
                let times: Vec<f64> = (0..n).map(|t| 5.0 * (t as f64 + 0.5) / n as f64).collect();
                ModalityInput::new(*m, Latent::new(raw[2 * i].clone(), 128).unwrap())
                    .with_sequence(Sequence::new(raw[2 * i + 1].clone(), 128, times).unwrap())
                    .with_presence(Tensor::new(p.as_slice(), &Device::Cpu).unwrap())
            })
            .collect()
    }

    fn inputs(
        modalities: &[Modality],
        batch: usize,
        presence: &[Vec<f32>],
        seed: u64,
        dtype: DType,
    ) -> Vec<ModalityInput> {
        assemble(modalities, &raw(modalities, batch, seed, dtype), presence)
    }

    /// Presence patterns for `n` modalities and `batch` samples with at least one modality per sample.
    fn presence(n: usize, batch: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
        prop::collection::vec(1u32..(1 << n), batch).prop_map(move |bits| {
            (0..n).map(|m| bits.iter().map(|b| if b >> m & 1 == 1 { 1.0 } else { 0.0 }).collect()).collect()
        })
    }

    /// `pattern` cut to `n` modalities and `batch` samples, each sample keeping one modality at least.
    fn restrict(pattern: Vec<Vec<f32>>, n: usize, batch: usize, fallback: usize) -> Vec<Vec<f32>> {
        let mut p: Vec<Vec<f32>> =
            pattern.into_iter().take(n).map(|v| v.into_iter().take(batch).collect()).collect();
        for b in 0..batch {
            if p.iter().all(|v| v[b] == 0.0) {
                p[fallback.min(n - 1)][b] = 1.0;
            }
        }
        p
    }

    fn all_modes() -> impl Strategy<Value = FusionMode> {
        prop::sample::select(FusionMode::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// An absent modality contributes nothing: changing its latent and sequence changes no output of
        /// that sample, with two or three modalities, in every mode.
        #[test]
        fn an_absent_modality_contributes_nothing(
            mode in all_modes(), three in any::<bool>(), batch in 1usize..5, seed in 0u64..1000,
            pattern in presence(3, 4),
        ) {
            let modalities = if three { &THREE[..] } else { &THREE[..2] };
            let p = restrict(pattern, modalities.len(), batch, 0);
            let (_, f) = build_set(mode, modalities, DType::F32, seed);
            let base_raw = raw(modalities, batch, seed, DType::F32);
            let base = f.fuse_set(&assemble(modalities, &base_raw, &p), false).unwrap().fused;
            prop_assert!(max_abs(&base).is_finite());
            // Move only what is absent (the rows of absent samples): no output may change.
            let moved: Vec<Tensor> = base_raw
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let keep = Tensor::new(p[k / 2].as_slice(), &Device::Cpu).unwrap();
                    let keep = if t.rank() == 2 { keep.unsqueeze(1).unwrap() } else { keep.unsqueeze(1).unwrap().unsqueeze(2).unwrap() };
                    let bumped = ((t * 3.0).unwrap() + 1.0).unwrap();
                    (t.broadcast_mul(&keep).unwrap() + bumped.broadcast_mul(&keep.affine(-1.0, 1.0).unwrap()).unwrap()).unwrap()
                })
                .collect();
            let same = f.fuse_set(&assemble(modalities, &moved, &p), false).unwrap().fused;
            let d = max_abs(&(same - &base).unwrap());
            prop_assert!(d < 1e-5, "{} with {:?}: an absent input moved the output by {}", mode, p, d);
        }

        /// Masked gradients equal central differences (f64), with respect to the inputs and every
        /// parameter, including samples with a single modality present.
        #[test]
        fn masked_gradients_equal_finite_differences(
            mode in all_modes(), three in any::<bool>(), batch in 1usize..4, seed in 0u64..1000,
            pattern in presence(3, 3),
        ) {
            let modalities = if three { &THREE[..] } else { &THREE[..2] };
            let p = restrict(pattern, modalities.len(), batch, 1);
            let (varmap, f) = build_set(mode, modalities, DType::F64, seed);
            let vars: Vec<candle_core::Var> =
                raw(modalities, batch, seed, DType::F64).iter().map(|t| candle_core::Var::from_tensor(t).unwrap()).collect();
            let r = latent(batch, seed + 99).into_tensor().to_dtype(DType::F64).unwrap();
            let loss_of = |raw: &[Tensor]| -> Tensor {
                (f.fuse_set(&assemble(modalities, raw, &p), false).unwrap().fused * &r).unwrap().sum_all().unwrap()
            };
            let current = || vars.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>();
            let grads = loss_of(&current()).backward().unwrap();
            let value = || loss_of(&current()).to_scalar::<f64>().unwrap();
            let eps = 1e-6;
            let mut targets: Vec<(String, candle_core::Var, Option<usize>)> =
                vars.iter().enumerate().map(|(k, v)| (format!("input {k}"), v.clone(), Some(k / 2))).collect();
            let mut params: Vec<(String, candle_core::Var)> =
                varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            params.sort_by(|a, b| a.0.cmp(&b.0));
            targets.extend(params.into_iter().map(|(k, v)| (k, v, None)));
            for (name, var, modality) in targets {
                let g: Vec<f64> = grads
                    .get(var.as_tensor())
                    .map_or(vec![0.0; var.elem_count()], |g| g.flatten_all().unwrap().to_vec1().unwrap());
                prop_assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", name);
                let base = var.as_tensor().copy().unwrap();
                let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
                let per_sample = flat.len() / var.dims()[0];
                for idx in [0, flat.len() / 2, flat.len() - 1] {
                    let bump = |dx: f64| {
                        let mut x = flat.clone();
                        x[idx] += dx;
                        var.set(&Tensor::from_vec(x, base.dims(), &Device::Cpu).unwrap()).unwrap();
                        let y = value();
                        var.set(&base).unwrap();
                        y
                    };
                    let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
                    prop_assert!((g[idx] - numeric).abs() < 1e-6 * numeric.abs().max(1.0),
                        "{} {:?}: d/d {}[{}] analytic {} numeric {}", mode, p, name, idx, g[idx], numeric);
                    if let Some(m) = modality && p[m][idx / per_sample] == 0.0 {
                        prop_assert!(g[idx] == 0.0, "{}: absent input has gradient {}", name, g[idx]);
                    }
                }
            }
        }
    }

    /// With every modality present, explicit masks of 1 give the unmasked (reference) numbers.
    #[test]
    fn masks_of_ones_give_the_reference_numbers() {
        for mode in FusionMode::ALL.iter().copied() {
            for modalities in [&THREE[..2], &THREE[..]] {
                let (_, f) = build_set(mode, modalities, DType::F32, 4);
                let ones = vec![vec![1.0f32; 3]; modalities.len()];
                let masked = f.fuse_set(&inputs(modalities, 3, &ones, 8, DType::F32), false).unwrap().fused;
                let plain: Vec<ModalityInput> = inputs(modalities, 3, &ones, 8, DType::F32)
                    .into_iter()
                    .map(|x| ModalityInput { present: None, ..x })
                    .collect();
                let reference = f.fuse_set(&plain, false).unwrap().fused;
                let d = max_abs(&(masked - reference).unwrap());
                assert!(d < 1e-5, "{mode} {modalities:?}: {d}");
            }
        }
    }

    /// The two-modality call is the set call with EEG and audio present everywhere; a third modality
    /// left out of the set is absent.
    #[test]
    fn fuse_is_fuse_set_and_a_missing_input_is_absent() {
        for mode in pooled() {
            let (_, f) = build(mode, 2);
            let (e, a) = (latent(4, 1), latent(4, 2));
            let two = f.fuse(&e, &a, false).unwrap().into_tensor();
            let set = f
                .fuse_set(
                    &[
                        ModalityInput::new(Modality::Eeg, e.clone()),
                        ModalityInput::new(Modality::Audio, a.clone()),
                    ],
                    false,
                )
                .unwrap()
                .fused;
            assert_eq!(two.to_vec2::<f32>().unwrap(), set.to_vec2::<f32>().unwrap(), "{mode}");
            // Audio left out equals audio masked out.
            let eeg_only = f.fuse_set(&[ModalityInput::new(Modality::Eeg, e.clone())], false).unwrap().fused;
            let masked = f
                .fuse_set(
                    &[
                        ModalityInput::new(Modality::Eeg, e.clone()),
                        ModalityInput::new(Modality::Audio, a.clone())
                            .with_presence(Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()),
                    ],
                    false,
                )
                .unwrap()
                .fused;
            assert!(max_abs(&(eeg_only - masked).unwrap()) < 1e-6, "{mode}");
        }
    }

    /// The adaptive router's weights are a distribution per sample, its balance penalty is 1 for uniform
    /// use and trains the router.
    #[test]
    fn the_adaptive_router_mixes_the_modes() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = FusionConfig { mode: FusionMode::Adaptive, router_balance: 0.5, ..FusionConfig::default() };
        let f = Fusion::new(&cfg, vb).unwrap();
        encoders::init_pytorch_default(&varmap, 3).unwrap();
        let ones = vec![vec![1.0f32; 4]; 2];
        let out = f.fuse_set(&inputs(&THREE[..2], 4, &ones, 1, DType::F32), true).unwrap();
        let w = out.router.unwrap();
        assert_eq!(w.dims(), &[4, 4]);
        let rows: Vec<f32> = w.sum(1).unwrap().to_vec1().unwrap();
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-5), "{rows:?}");
        let aux = out.aux_loss.unwrap().to_scalar::<f32>().unwrap();
        assert!((0.5..=0.5 * 4.0).contains(&aux), "K·Σ mean² lies in [1, K], times the weight: {aux}");
        let penalty =
            f.fuse_set(&inputs(&THREE[..2], 4, &ones, 1, DType::F32), true).unwrap().aux_loss.unwrap();
        let g = penalty.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let router = g.get(data["router_out.weight"].as_tensor()).unwrap();
        assert!(max_abs(router) > 0.0, "the penalty trains the router");
        assert!(
            data.contains_key("temporal.layers.0.eeg.norm1.weight")
                && data.contains_key("gated.gate_fc.weight")
        );
        assert!(
            data.contains_key("cross_attention.attn_e2a.in_proj_weight")
                && data.contains_key("concat.proj.weight")
        );
    }

    #[test]
    fn bad_sets_are_errors() {
        let (_, f) = build(FusionMode::Gated, 0);
        let e = || ModalityInput::new(Modality::Eeg, latent(2, 0));
        let a = || ModalityInput::new(Modality::Audio, latent(2, 1));
        let msg = |r: Result<Inspection>| r.unwrap_err().to_string();
        assert!(msg(f.fuse_set(&[], false)).contains("no modality"));
        assert!(msg(f.fuse_set(&[e(), e()], false)).contains("given twice"));
        let v = ModalityInput::new(Modality::Video, latent(2, 2));
        assert!(msg(f.fuse_set(&[e(), v], false)).contains("not video"));
        let short = ModalityInput::new(Modality::Audio, latent(3, 1));
        assert!(matches!(f.fuse_set(&[e(), short], false), Err(Error::Shape(_))));
        let mask = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        assert!(msg(f.fuse_set(&[e(), a().with_presence(mask(&[1.0, 0.5]))], false)).contains("not 0 or 1"));
        assert!(msg(f.fuse_set(&[e(), a().with_presence(mask(&[1.0]))], false)).contains("expected [2]"));
        let none = msg(
            f.fuse_set(&[e().with_presence(mask(&[1.0, 0.0])), a().with_presence(mask(&[1.0, 0.0]))], false)
        );
        assert!(none.contains("sample 1") && none.contains("no modality present"), "{none}");
        let (_, t) = build(FusionMode::Temporal, 0);
        assert!(msg(t.fuse_set(&[e(), a()], false)).contains("needs the sequence of eeg"));
        let cfg = |m: Vec<Modality>| FusionConfig { modalities: m, ..FusionConfig::default() };
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(Fusion::new(&cfg(vec![]), vb.clone()).is_err());
        assert!(Fusion::new(&cfg(vec![Modality::Eeg, Modality::Eeg]), vb).is_err());
    }

    /// The reference layer's tensor names are unchanged; three modalities add their scale and pairwise
    /// attention, and absent embeddings exist only where asked for.
    #[test]
    fn tensor_names_follow_the_modalities() {
        let names = |mode, modalities: &[Modality], absent| {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let cfg = FusionConfig {
                mode,
                modalities: modalities.to_vec(),
                absent_embeddings: absent,
                ..FusionConfig::default()
            };
            Fusion::new(&cfg, vb).unwrap();
            let mut n: Vec<String> = varmap
                .data()
                .lock()
                .unwrap()
                .keys()
                .map(|k| k.split('.').next().unwrap().to_owned())
                .collect();
            n.sort();
            n.dedup();
            n
        };
        assert_eq!(
            names(FusionMode::CrossAttention, &THREE[..2], true),
            ["attn_a2e", "attn_e2a", "audio_scale", "blend_logits", "eeg_scale", "proj"]
        );
        assert_eq!(names(FusionMode::Concat, &THREE[..2], false), ["audio_scale", "eeg_scale", "proj"]);
        assert_eq!(
            names(FusionMode::Concat, &THREE, true),
            ["audio_absent", "audio_scale", "eeg_absent", "eeg_scale", "proj", "video_absent", "video_scale"]
        );
        assert_eq!(
            names(FusionMode::CrossAttention, &THREE, false),
            [
                "attn_a2e",
                "attn_a2v",
                "attn_e2a",
                "attn_e2v",
                "attn_v2a",
                "attn_v2e",
                "audio_scale",
                "blend_logits",
                "eeg_scale",
                "proj",
                "video_scale"
            ]
        );
    }

    #[test]
    fn eval_output_of_a_sample_ignores_the_rest_of_its_batch() {
        for mode in pooled() {
            let (_, f) = build(mode, 3);
            let (e, a) = (latent(5, 10), latent(5, 11));
            let all = f.fuse(&e, &a, false).unwrap().into_tensor();
            let one = |l: &Latent| Latent::new(l.tensor().i(2..3).unwrap(), 128).unwrap();
            let alone = f.fuse(&one(&e), &one(&a), false).unwrap().into_tensor();
            assert!(max_abs(&(alone - all.i(2..3).unwrap()).unwrap()) < 1e-6, "{mode}");
        }
    }

    #[test]
    fn wrong_inputs_and_modes_are_errors() {
        let (_, f) = build(FusionMode::Concat, 0);
        let short = Latent::new(Tensor::zeros((2, 64), DType::F32, &Device::Cpu).unwrap(), 64).unwrap();
        assert!(matches!(f.fuse(&latent(2, 0), &short, false), Err(Error::Shape(_))));
        assert!(matches!(f.fuse(&latent(2, 0), &latent(3, 0), false), Err(Error::Shape(_))));
        assert!(matches!(f.gate_values(&latent(2, 0), &latent(2, 1)), Err(Error::WrongMode { .. })));
        assert!(f.blend_weights().is_err());
        let (_, x) = build(FusionMode::CrossAttention, 0);
        let w = x.blend_weights().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w, vec![0.5, 0.5]);
    }
}
