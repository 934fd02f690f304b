//! The `temporal` mode: a cross-modal transformer over the encoders' time steps on one clock.
//!
//! Each present modality's sequence `(B, Tᵢ, 128)` is scaled per channel, projected to `D` and given a
//! sinusoidal encoding of each step's time in seconds (the same clock for every modality, whatever its step
//! rate); every attention also rotates its queries and keys by their steps' times (rotary codes), so its
//! scores depend on the time between a query step and a key step. Then `L` pre-LayerNorm layers, each for
//! every modality `i`:
//! `xᵢ += mean over present j ≠ i of MHA(LN₁ᵢ(xᵢ) → LN₁ⱼ(xⱼ))` (it attends to the others' steps),
//! `xᵢ += MHA(LN₂ᵢ(xᵢ) → LN₂ᵢ(xᵢ))` (self-attention), `xᵢ += W₂·ReLU(W₁·LN₃ᵢ(xᵢ))` (feed-forward).
//! Finally `LNᵢ(xᵢ)` is averaged over time, the modality means are averaged over the modalities present in
//! the sample, and `Linear(D → 128)` gives the fused vector (ReLU and dropout follow in [`crate::Fusion`]).

use candle_core::{D, Module, Tensor};
use candle_nn::VarBuilder;
use core_types::Modality;
use encoders::Linear;

use crate::attention::MultiHeadAttention;
use crate::error::Result;

/// Layer normalisation over the last axis, `γ ⊙ (x − mean) / √(var + ε) + β` with the biased variance,
/// as PyTorch's `nn.LayerNorm`, with its own backward pass (candle 0.11's fused `layer_norm` records no
/// gradient): one CPU op, or candle's elementary ops on other devices. Tensors `weight` (γ, initialised at 1) and `bias` (β, at 0).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// PyTorch's epsilon.
    pub const EPS: f64 = 1e-5;

    /// A layer norm over `dim` features under `vb`.
    ///
    /// # Errors
    /// A candle error from the var builder.
    pub fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            eps: Self::EPS,
        })
    }
}

impl LayerNorm {
    /// The layer norm from candle's elementary ops (other devices and dtypes; tests compare it with the CPU
    /// op).
    pub(crate) fn forward_generic(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

impl Module for LayerNorm {
    /// On the CPU in f32/f64: one op with its own backward pass ([`crate::layer_norm_op`]); elsewhere
    /// [`LayerNorm::forward_generic`].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if encoders::cpu_op::supported(x) && x.dtype() == self.weight.dtype() {
            let op = crate::layer_norm_op::LayerNormOp { eps: self.eps };
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        self.forward_generic(x)
    }
}

/// Sinusoidal encoding of times in seconds, `(T, dim)`: pairs `sin(2πt/Pₖ)`, `cos(2πt/Pₖ)` with periods
/// `Pₖ` geometric from 0.1 s to 20 s, so that both the step spacing of the encoders (0.04–0.16 s) and the
/// whole window (5 s) are resolved. Any step rate maps to the same clock.
///
/// # Errors
/// From candle.
pub fn time_encoding(times: &[f64], dim: usize, like: &Tensor) -> candle_core::Result<Tensor> {
    let table = crate::tables::cached(crate::tables::Kind::TimeEncoding, times, (dim, 0), like, || {
        let pairs = dim / 2;
        let mut v = Vec::with_capacity(times.len() * dim);
        for &t in times {
            for k in 0..dim {
                let i = k / 2;
                let period = 0.1 * 200f64.powf(if pairs > 1 { i as f64 / (pairs - 1) as f64 } else { 0.0 });
                let phase = std::f64::consts::TAU * t / period;
                v.push(if k % 2 == 0 { phase.sin() } else { phase.cos() });
            }
        }
        Ok(vec![Tensor::from_vec(v, (times.len(), dim), like.device())?.to_dtype(like.dtype())?])
    })?;
    Ok(table[0].clone())
}

/// One modality's blocks of one layer.
#[derive(Debug, Clone)]
struct Stream {
    norm1: LayerNorm,
    self_attn: MultiHeadAttention,
    norm2: LayerNorm,
    norm3: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

#[derive(Debug, Clone)]
struct Layer {
    streams: Vec<Stream>,
    /// `(query, key, attention)` for every ordered pair of modalities.
    cross: Vec<(usize, usize, MultiHeadAttention)>,
}

/// The transformer of the `temporal` mode (see the module docs).
///
/// Tensor names, under the fusion layer: `{m}_in.*` (projection to `D`), `layers.{l}.{m}.norm1|norm2|norm3.*`,
/// `layers.{l}.{m}.self_attn.*`, `layers.{l}.{m}.ff1|ff2.*`, `layers.{l}.attn_{q}2{k}.*`, `{m}_out_norm.*`,
/// `out.*`.
#[derive(Debug, Clone)]
pub(crate) struct Temporal {
    dim: usize,
    inputs: Vec<Linear>,
    layers: Vec<Layer>,
    out_norms: Vec<LayerNorm>,
    out: Linear,
}

/// What one temporal pass gives: the fused vector before ReLU `(B, latent)` and the last layer's cross
/// attention maps `(query, key, (B, heads, Tq, Tk))`.
pub(crate) type TemporalOutput = (Tensor, Vec<(usize, usize, Tensor)>);

impl Temporal {
    pub(crate) fn new(
        modalities: &[Modality],
        latent: usize,
        dim: usize,
        layers: usize,
        heads: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let inputs = modalities
            .iter()
            .map(|m| Linear::new(latent, dim, vb.pp(format!("{m}_in"))))
            .collect::<candle_core::Result<_>>()?;
        let layers = (0..layers)
            .map(|l| {
                let vb = vb.pp(format!("layers.{l}"));
                let streams = modalities
                    .iter()
                    .map(|m| {
                        let vb = vb.pp(m.as_str());
                        Ok(Stream {
                            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
                            self_attn: MultiHeadAttention::new(dim, heads, vb.pp("self_attn"))?,
                            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
                            norm3: LayerNorm::new(dim, vb.pp("norm3"))?,
                            ff1: Linear::new(dim, 2 * dim, vb.pp("ff1"))?,
                            ff2: Linear::new(2 * dim, dim, vb.pp("ff2"))?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut cross = Vec::new();
                for (i, q) in modalities.iter().enumerate() {
                    for (j, k) in modalities.iter().enumerate().filter(|(j, _)| *j != i) {
                        let name = format!("attn_{}2{}", q.tag(), k.tag());
                        cross.push((i, j, MultiHeadAttention::new(dim, heads, vb.pp(name))?));
                    }
                }
                Ok(Layer { streams, cross })
            })
            .collect::<Result<Vec<_>>>()?;
        let out_norms = modalities
            .iter()
            .map(|m| LayerNorm::new(dim, vb.pp(format!("{m}_out_norm"))))
            .collect::<candle_core::Result<_>>()?;
        let out = Linear::new(dim, latent, vb.pp("out"))?;
        Ok(Self { dim, inputs, layers, out_norms, out })
    }

    /// Runs the transformer over the scaled sequences `xs[i]` `(B, Tᵢ, latent)` with step times `times[i]`;
    /// `masks[i]` `(B, 1)` says which samples have modality `i` (`None`: all of them have every modality).
    /// `train`: the attention ops hold their weights for a backward pass (evaluation: they do not).
    pub(crate) fn forward(
        &self,
        xs: &[Tensor],
        times: &[&[f64]],
        masks: Option<(&[Tensor], &Tensor)>,
        train: bool,
    ) -> Result<TemporalOutput> {
        let mut h = xs
            .iter()
            .zip(times)
            .zip(&self.inputs)
            .map(|((x, t), proj)| Ok(proj.forward(x)?.broadcast_add(&time_encoding(t, self.dim, x)?)?))
            .collect::<Result<Vec<_>>>()?;
        let n = h.len();
        let mut maps = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = h
                .iter()
                .zip(&layer.streams)
                .map(|(x, s)| s.norm1.forward(x))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let mut ctx: Vec<Option<Tensor>> = vec![None; n];
            for (i, j, mha) in &layer.cross {
                let last = l + 1 == self.layers.len();
                let (c, w) =
                    mha.forward_timed(&normed[*i], &normed[*j], times[*i], times[*j], last, train)?;
                let c = match masks {
                    Some((m, _)) => c.broadcast_mul(&m[*j].unsqueeze(2)?)?,
                    None => c,
                };
                ctx[*i] = Some(match ctx[*i].take() {
                    Some(acc) => (acc + c)?,
                    None => c,
                });
                if let (true, Some(w)) = (last, w) {
                    maps.push((*i, *j, w));
                }
            }
            for (i, ((x, s), t)) in h.iter_mut().zip(&layer.streams).zip(times).enumerate() {
                if let Some(c) = ctx[i].take() {
                    let c = match masks {
                        Some((m, count)) => {
                            let others = count.broadcast_sub(&m[i])?.maximum(1.0)?.unsqueeze(2)?;
                            c.broadcast_div(&others)?
                        }
                        None if n > 2 => (c / (n - 1) as f64)?,
                        None => c,
                    };
                    *x = (&*x + c)?;
                }
                let y = s.norm2.forward(x)?;
                *x = (&*x + s.self_attn.forward_timed(&y, &y, t, t, false, train)?.0)?;
                let y = s.norm3.forward(x)?;
                *x = (&*x + s.ff2.forward(&s.ff1.forward_relu(&y)?)?)?;
            }
        }
        // Mean over time of each normalised stream, then over the modalities present in each sample.
        let pooled = h
            .iter()
            .zip(&self.out_norms)
            .map(|(x, norm)| crate::graph_ops::mean_over_time(&norm.forward(x)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mixed = match masks {
            Some((m, count)) => {
                let mut acc: Option<Tensor> = None;
                for (p, m) in pooled.iter().zip(m) {
                    let term = p.broadcast_mul(m)?;
                    acc = Some(match acc {
                        Some(a) => (a + term)?,
                        None => term,
                    });
                }
                acc.map(|a| a.broadcast_div(count)).transpose()?
            }
            None => {
                let sum = pooled.iter().skip(1).try_fold(pooled[0].clone(), |a, p| a + p)?;
                Some((sum / n as f64)?)
            }
        };
        let mixed = mixed.ok_or_else(|| crate::Error::Input("no modality to fuse".into()))?;
        Ok((self.out.forward(&mixed)?, maps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f64 / 300.0 - 1.6).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The layer norm equals its definition, and its gradients (input, γ, β) equal central
        /// differences in f64.
        #[test]
        fn layer_norm_matches_its_definition_and_finite_differences(rows in 1usize..4, dim in 2usize..9, seed in 0u64..1000) {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
            let ln = LayerNorm::new(dim, vb).unwrap();
            let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, var) in &vars {
                var.set(&Tensor::new(values(dim, seed + name.len() as u64), &Device::Cpu).unwrap()).unwrap();
            }
            let x = Var::from_tensor(&Tensor::from_vec(values(rows * dim, seed), (rows, dim), &Device::Cpu).unwrap()).unwrap();
            vars.push(("x".into(), x.clone()));
            let r = Tensor::from_vec(values(rows * dim, seed + 7), (rows, dim), &Device::Cpu).unwrap();
            let y = ln.forward(x.as_tensor()).unwrap();
            let (xv, yv): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (x.as_tensor().to_vec2().unwrap(), y.to_vec2().unwrap());
            let (g, b): (Vec<f64>, Vec<f64>) = (ln.weight.to_vec1().unwrap(), ln.bias.to_vec1().unwrap());
            for (xr, yr) in xv.iter().zip(&yv) {
                let mean = xr.iter().sum::<f64>() / dim as f64;
                let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                for k in 0..dim {
                    let want = (xr[k] - mean) / (var + LayerNorm::EPS).sqrt() * g[k] + b[k];
                    prop_assert!((yr[k] - want).abs() < 1e-12);
                }
            }
            let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let loss = || (ln.forward(x.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            for (what, var) in &vars {
                let analytic: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let base = var.as_tensor().copy().unwrap();
                let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
                for (i, a) in analytic.iter().enumerate() {
                    let bump = |d: f64| {
                        let mut v = flat.clone();
                        v[i] += d;
                        var.set(&Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap()).unwrap();
                        let y = loss();
                        var.set(&base).unwrap();
                        y
                    };
                    let numeric = (bump(1e-6) - bump(-1e-6)) / 2e-6;
                    prop_assert!((a - numeric).abs() < 1e-6 * numeric.abs().max(1.0), "{} [{}]: {} vs {}", what, i, a, numeric);
                }
            }
        }
    }

    /// The CPU op gives what the elementary ops give, in f32 on a `(B, T, D)` input: outputs and all three
    /// gradients, over more rows than one parallel block.
    #[test]
    fn layer_norm_op_equals_the_elementary_ops() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let ln = LayerNorm::new(24, vb).unwrap();
        for (i, var) in varmap.all_vars().iter().enumerate() {
            var.set(&Tensor::new(values(24, 3 + i as u64), &dev).unwrap().to_dtype(DType::F32).unwrap())
                .unwrap();
        }
        let x = Tensor::from_vec(values(3 * 50 * 24, 11), (3, 50, 24), &dev).unwrap();
        let x = Var::from_tensor(&(x.to_dtype(DType::F32).unwrap() * 4.0).unwrap()).unwrap();
        let r = Tensor::from_vec(values(3 * 50 * 24, 5), (3, 50, 24), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let run = |generic: bool| {
            let y =
                if generic { ln.forward_generic(x.as_tensor()) } else { ln.forward(x.as_tensor()) }.unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            for t in [x.as_tensor(), &ln.weight, &ln.bias] {
                out.push(g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            out
        };
        let (op, generic) = (run(false), run(true));
        for (what, (a, b)) in ["y", "dx", "dγ", "dβ"].iter().zip(op.iter().zip(&generic)) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (u, v) in a.iter().zip(b) {
                assert!((u - v).abs() <= 1e-5 * scale.max(1.0), "{what}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn time_encoding_is_one_clock() {
        let like = Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap();
        let a = time_encoding(&[0.0, 0.16, 0.32], 8, &like).unwrap().to_vec2::<f64>().unwrap();
        let b = time_encoding(&[0.32, 0.04], 8, &like).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!(a[2], b[0], "the same time gives the same code whatever the step rate");
        assert_eq!((a[0][0], a[0][1]), (0.0, 1.0));
        assert!(a[1] != b[1]);
    }
}
