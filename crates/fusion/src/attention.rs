//! Multi-head attention written with ops that backpropagate (candle's fused softmax/sdpa record no
//! gradient), in PyTorch's `nn.MultiheadAttention` tensor layout.

use candle_core::{D, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::Result;

/// `nn.MultiheadAttention(embed, heads, batch_first=True)` without attention dropout: tensors
/// `in_proj_weight` `(3·E, E)`, `in_proj_bias` `(3·E)`, `out_proj.weight` `(E, E)`, `out_proj.bias` `(E)`.
#[derive(Debug, Clone)]
pub(crate) struct MultiHeadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    embed: usize,
    heads: usize,
}

impl MultiHeadAttention {
    pub(crate) fn new(embed: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let bound = (6.0 / (4 * embed) as f64).sqrt();
        let in_proj_weight = vb.get_with_hints(
            (3 * embed, embed),
            "in_proj_weight",
            candle_nn::Init::Uniform { lo: -bound, up: bound },
        )?;
        let in_proj_bias = vb.get_with_hints(3 * embed, "in_proj_bias", candle_nn::Init::Const(0.0))?;
        let out_proj = candle_nn::linear(embed, embed, vb.pp("out_proj"))?;
        Ok(Self { in_proj_weight, in_proj_bias, out_proj, embed, heads })
    }

    /// Projection `i` (0 = query, 1 = key, 2 = value) of `x` `(B, T, E)`, split into heads `(B, H, T, E/H)`.
    fn project(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let w = self.in_proj_weight.narrow(0, i * self.embed, self.embed)?;
        let bias = self.in_proj_bias.narrow(0, i * self.embed, self.embed)?;
        let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(&bias)?;
        Ok(y.reshape((b, t, self.heads, self.embed / self.heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// Attends from `query` `(B, Tq, E)` to `context` `(B, Tk, E)`; returns the output `(B, Tq, E)` and the
    /// attention weights `(B, H, Tq, Tk)` (each row sums to 1).
    pub(crate) fn forward(&self, query: &Tensor, context: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, tq, _) = query.dims3()?;
        let q = self.project(query, 0)?;
        let k = self.project(context, 1)?;
        let v = self.project(context, 2)?;
        let scale = 1.0 / ((self.embed / self.heads) as f64).sqrt();
        // With a handful of tokens and a few dimensions per head, a batched matmul is B·H tiny matrix
        // products; a broadcast product and a sum over the shared axis is the same arithmetic in two
        // element-wise ops. scores[b,h,i,j] = Σ_d q[b,h,i,d]·k[b,h,j,d].
        let scores = (q.unsqueeze(3)?.broadcast_mul(&k.unsqueeze(2)?)?.sum(D::Minus1)? * scale)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        // ctx[b,h,i,d] = Σ_j weights[b,h,i,j]·v[b,h,j,d].
        let ctx = weights.unsqueeze(4)?.broadcast_mul(&v.unsqueeze(2)?)?.sum(3)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, tq, self.embed))?;
        Ok((self.out_proj.forward(&ctx)?, weights))
    }
}
