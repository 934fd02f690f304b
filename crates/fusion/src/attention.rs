//! Multi-head attention written with ops that backpropagate (candle's fused softmax/sdpa record no
//! gradient), in PyTorch's `nn.MultiheadAttention` tensor layout.

use candle_core::{D, Module, Tensor};
use candle_nn::VarBuilder;
use encoders::Linear;

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
        let out_proj = Linear::new(embed, embed, vb.pp("out_proj"))?;
        Ok(Self { in_proj_weight, in_proj_bias, out_proj, embed, heads })
    }

    /// Projection `i` (0 = query, 1 = key, 2 = value) of `x` `(B, T, E)`; head `h` is columns `h·d..(h+1)·d`.
    fn project(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let w = self.in_proj_weight.narrow(0, i * self.embed, self.embed)?;
        let bias = self.in_proj_bias.narrow(0, i * self.embed, self.embed)?;
        Ok(encoders::linear(x, &w, &bias)?)
    }

    /// `(B, T, E)` → `(B, H, T, E/H)`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.heads, self.embed / self.heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// Attends from `query` `(B, Tq, E)` to `context` `(B, Tk, E)`; returns the output `(B, Tq, E)` and the
    /// attention weights `(B, H, Tq, Tk)` (each row sums to 1). On the CPU the attention core is one op
    /// with its own backward pass (its weights are then a detached copy, for inspection); elsewhere it is
    /// built from candle ops.
    pub(crate) fn forward(&self, query: &Tensor, context: &Tensor) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = (self.project(query, 0)?, self.project(context, 1)?, self.project(context, 2)?);
        if encoders::cpu_op::supported(&q) {
            let (ctx, weights) = crate::attention_op::attend(&q, &k, &v, self.heads)?;
            return Ok((self.out_proj.forward(&ctx)?, weights));
        }
        let (ctx, weights) = self.forward_generic(&q, &k, &v)?;
        Ok((self.out_proj.forward(&ctx)?, weights))
    }

    /// [`Self::forward`] (the weights only when `keep_weights`; held for a backward pass only when
    /// `train`) with rotary time codes: within each head, feature pairs `(2f, 2f + 1)` of the
    /// projected queries and keys are rotated by the angle `2π·t / Pf` of their step's time `t` in seconds
    /// (periods `Pf` geometric from 0.1 s to 20 s), so that the scores depend on the time *between* a query
    /// step and a key step, on one clock whatever the two sequences' step rates.
    pub(crate) fn forward_timed(
        &self,
        query: &Tensor,
        context: &Tensor,
        q_times: &[f64],
        k_times: &[f64],
        keep_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (q, k, v) = (self.project(query, 0)?, self.project(context, 1)?, self.project(context, 2)?);
        if encoders::cpu_op::supported(&q) && !GENERIC_ROTATE.with(std::cell::Cell::get) {
            // The rotation inside the attention op: no rotated copies in the graph.
            let rotation = crate::attention_op::Rotation {
                q: rotation_tables(&q, q_times, self.heads)?,
                k: rotation_tables(&k, k_times, self.heads)?,
            };
            let (ctx, weights) = crate::attention_op::attend_long(
                &q,
                &k,
                &v,
                self.heads,
                keep_weights,
                train,
                Some(rotation),
            )?;
            return Ok((self.out_proj.forward(&ctx)?, weights));
        }
        let (q, k) = (rotate(&q, q_times, self.heads)?, rotate(&k, k_times, self.heads)?);
        let (ctx, weights) = if encoders::cpu_op::supported(&q) {
            crate::attention_op::attend_long(&q, &k, &v, self.heads, keep_weights, train, None)?
        } else {
            let (ctx, w) = self.forward_generic(&q, &k, &v)?;
            (ctx, Some(w))
        };
        Ok((self.out_proj.forward(&ctx)?, weights))
    }

    /// The attention core from candle ops, on projected `q` `(B, Tq, E)`, `k` and `v` `(B, Tk, E)`:
    /// the context `(B, Tq, E)` before the output projection, and the weights.
    fn forward_generic(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, tq, _) = q.dims3()?;
        let (q, k, v) = (self.split_heads(q)?, self.split_heads(k)?, self.split_heads(v)?);
        let scale = 1.0 / ((self.embed / self.heads) as f64).sqrt();
        // With a handful of tokens and a few dimensions per head, a batched matmul is B·H tiny matrix
        // products; a broadcast product and a sum over the shared axis is the same arithmetic in two
        // element-wise ops. Long sequences (the temporal mode) take batched matrix products: the broadcast
        // product would hold B·H·Tq·Tk·E/H values (gigabytes at 500 steps).
        let tokens = tq * k.dim(2)? <= 64;
        // scores[b,h,i,j] = Σ_d q[b,h,i,d]·k[b,h,j,d]
        let scores = if tokens {
            q.unsqueeze(3)?.broadcast_mul(&k.unsqueeze(2)?)?.sum(D::Minus1)?
        } else {
            q.matmul(&k.t()?)?
        };
        let weights = candle_nn::ops::softmax(&(scores * scale)?, D::Minus1)?;
        // ctx[b,h,i,d] = Σ_j weights[b,h,i,j]·v[b,h,j,d]
        let ctx = if tokens {
            weights.unsqueeze(4)?.broadcast_mul(&v.unsqueeze(2)?)?.sum(3)?
        } else {
            weights.matmul(&v)?
        };
        Ok((ctx.transpose(1, 2)?.reshape((b, tq, self.embed))?, weights))
    }
}

/// The rotation tables of steps at `times` for `x` `(B, T, E)` split into `heads`: `[cos, sin]`, each
/// `(1, T, E/2)`, one angle per feature pair (see [`MultiHeadAttention::forward_timed`]).
fn rotation_tables(x: &Tensor, times: &[f64], heads: usize) -> Result<[Tensor; 2]> {
    let (_, t, e) = x.dims3()?;
    let hd = e / heads;
    let pairs = hd / 2;
    let tables = crate::tables::cached(crate::tables::Kind::Rotation, times, (heads, e), x, || {
        let (mut cos, mut sin) = (Vec::with_capacity(t * e / 2), Vec::with_capacity(t * e / 2));
        for &time in times {
            for _ in 0..heads {
                for f in 0..pairs {
                    let period =
                        0.1 * 200f64.powf(if pairs > 1 { f as f64 / (pairs - 1) as f64 } else { 0.0 });
                    let angle = std::f64::consts::TAU * time / period;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table = |v: Vec<f64>| -> candle_core::Result<Tensor> {
            Tensor::from_vec(v, (1, t, e / 2), x.device())?.to_dtype(x.dtype())
        };
        Ok(vec![table(cos)?, table(sin)?])
    })?;
    let [cos, sin]: [Tensor; 2] =
        tables.try_into().map_err(|_| crate::Error::Input("rotation tables: not a cos and a sin".into()))?;
    Ok([cos, sin])
}

/// Rotates the feature pairs of `x` `(B, T, E)` by their step's angle with candle's ops: pair `(e, o)`
/// becomes `(e·c − o·s, e·s + o·c)`. Other devices, and the tests' reference for the rotation the CPU
/// attention op applies itself (the same arithmetic, so the same bits).
fn rotate(x: &Tensor, times: &[f64], heads: usize) -> Result<Tensor> {
    let (b, t, e) = x.dims3()?;
    let [cos, sin] = rotation_tables(x, times, heads)?;
    let pairs_view = x.reshape((b, t, e / 2, 2))?;
    let (even, odd) = (pairs_view.narrow(3, 0, 1)?.squeeze(3)?, pairs_view.narrow(3, 1, 1)?.squeeze(3)?);
    let new_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
    let new_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
    Ok(Tensor::stack(&[new_even, new_odd], 3)?.reshape((b, t, e))?)
}

thread_local! {
    /// Tests: rotate with candle's ops (and give the CPU attention op rotated queries and keys), to compare
    /// with the rotation inside the op.
    static GENERIC_ROTATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use proptest::prelude::*;

    fn random(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> =
            (0..n as u64).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f64 / 500.0 - 1.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    type Core = fn(&Tensor, &Tensor, &Tensor, usize) -> Tensor;

    fn op(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        crate::attention_op::attend(q, k, v, heads).unwrap().0
    }

    fn op_long(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        crate::attention_op::attend_long(q, k, v, heads, false, true, None).unwrap().0
    }

    fn generic(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let mha = MultiHeadAttention::new(q.dim(2).unwrap(), heads, vb).unwrap();
        mha.forward_generic(q, k, v).unwrap().0
    }

    /// Gradients of `Σ core(q, k, v)·r` with respect to q, k and v.
    fn grads(core: Core, q: &Var, k: &Var, v: &Var, r: &Tensor, heads: usize) -> Vec<Vec<f64>> {
        let y = core(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads);
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        [q, k, v]
            .iter()
            .map(|x| g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    /// Rotary time codes make the scores depend on the time between steps only: shifting both clocks by
    /// the same amount changes nothing.
    #[test]
    fn rotary_scores_depend_on_time_differences() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let mha = MultiHeadAttention::new(8, 2, vb).unwrap();
        encoders::init_pytorch_default(&varmap, 3).unwrap();
        let (q, k) = (random(&[2, 3, 8], 1), random(&[2, 5, 8], 2));
        let (tq, tk) = ([0.1, 0.5, 0.9], [0.0, 0.3, 0.6, 0.9, 1.2]);
        let shift = |t: &[f64], d: f64| t.iter().map(|x| x + d).collect::<Vec<_>>();
        let (a, wa) = mha.forward_timed(&q, &k, &tq, &tk, true, false).unwrap();
        let wa = wa.unwrap();
        let (b, wb) = mha.forward_timed(&q, &k, &shift(&tq, 1.7), &shift(&tk, 1.7), true, false).unwrap();
        let wb = wb.unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-9, "{d}");
        let (_, wc) = mha.forward_timed(&q, &k, &tq, &shift(&tk, 0.2), true, false).unwrap();
        let wc = wc.unwrap();
        let moved = (wa.clone() - wc).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(moved > 1e-6, "moving the keys in time changes the weights");
        let same = (wa - wb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(same < 1e-9);
    }

    /// The rotation inside the CPU attention op gives the bits of candle's rotation ops before the op:
    /// the output, the weights and every gradient (query, context, projection weights), in f32 and f64,
    /// for queries and keys of different lengths on different step times, in self- and cross-attention
    /// (so the temporal mode trains to the same numbers either way).
    #[test]
    fn rotation_in_the_op_equals_the_candle_ops_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
            let mha = MultiHeadAttention::new(12, 3, vb).unwrap();
            encoders::init_pytorch_default(&varmap, 3).unwrap();
            let query = Var::from_tensor(&random(&[3, 7, 12], 5).to_dtype(dtype).unwrap()).unwrap();
            let context = Var::from_tensor(&random(&[3, 9, 12], 6).to_dtype(dtype).unwrap()).unwrap();
            let r = random(&[3, 7, 12], 7).to_dtype(dtype).unwrap();
            let tq = [0.0, 0.04, 0.33, 0.5, 1.0, 2.7, 4.96];
            let tk = [0.02, 0.1, 0.2, 0.7, 1.1, 1.9, 2.0, 3.3, 4.0];
            for cross in [true, false] {
                let run = |generic: bool| {
                    GENERIC_ROTATE.with(|g| g.set(generic));
                    let (c, t) =
                        if cross { (context.as_tensor(), &tk[..]) } else { (query.as_tensor(), &tq[..]) };
                    let (y, w) = mha.forward_timed(query.as_tensor(), c, &tq, t, true, true).unwrap();
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    GENERIC_ROTATE.with(|g| g.set(false));
                    let bits = |t: &Tensor| -> Vec<u64> {
                        let v =
                            t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                        v.into_iter().map(f64::to_bits).collect()
                    };
                    let mut out = vec![bits(&y), bits(&w.unwrap())];
                    let mut tensors = vec![query.as_tensor().clone()];
                    if cross {
                        tensors.push(context.as_tensor().clone());
                    }
                    let data = varmap.data().lock().unwrap();
                    let mut names: Vec<&String> = data.keys().collect();
                    names.sort();
                    tensors.extend(names.iter().map(|n| data[*n].as_tensor().clone()));
                    out.extend(tensors.iter().map(|t| bits(grads.get(t).unwrap())));
                    out
                };
                let (op, candle) = (run(false), run(true));
                assert_eq!(op, candle, "{dtype:?}, cross {cross}");
                assert!(op[2].iter().any(|b| f64::from_bits(*b) != 0.0));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The op equals the candle-op attention (output, weights, gradients) and its gradients equal
        /// central differences, in f64.
        #[test]
        fn op_matches_candle_ops_and_finite_differences(
            batch in 1usize..4, tq in 1usize..5, tk in 1usize..5, heads in 1usize..4, hd in 1usize..4, seed in 0u64..1000,
        ) {
            let e = heads * hd;
            let (q, k, v) = (random(&[batch, tq, e], seed), random(&[batch, tk, e], seed + 1), random(&[batch, tk, e], seed + 2));
            let r = random(&[batch, tq, e], seed + 3);
            let (qv, kv, vv) = (Var::from_tensor(&q).unwrap(), Var::from_tensor(&k).unwrap(), Var::from_tensor(&v).unwrap());
            let (a, b) = (op(&q, &k, &v, heads), generic(&q, &k, &v, heads));
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            prop_assert!(diff < 1e-12, "outputs differ by {}", diff);
            let go = grads(op, &qv, &kv, &vv, &r, heads);
            let gg = grads(generic, &qv, &kv, &vv, &r, heads);
            for (x, y) in go.iter().flatten().zip(gg.iter().flatten()) {
                prop_assert!((x - y).abs() < 1e-12, "gradients {} vs {}", x, y);
            }
            // The matrix-product variant (long sequences) agrees to rounding, outputs and gradients.
            let long = op_long(&q, &k, &v, heads);
            let diff = (long - op(&q, &k, &v, heads)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            prop_assert!(diff < 1e-12, "long outputs differ by {}", diff);
            let gl = grads(op_long, &qv, &kv, &vv, &r, heads);
            for (x, y) in gl.iter().flatten().zip(go.iter().flatten()) {
                prop_assert!((x - y).abs() < 1e-12, "long gradients {} vs {}", x, y);
            }
            let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
                (op(q, k, v, heads) * &r).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let inputs = [&q, &k, &v];
            for (which, analytic) in go.iter().enumerate() {
                let base: Vec<f64> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
                for (i, a) in analytic.iter().enumerate() {
                    let bump = |d: f64| {
                        let mut x = base.clone();
                        x[i] += d;
                        let t = Tensor::from_vec(x, inputs[which].dims(), &Device::Cpu).unwrap();
                        let mut args = [q.clone(), k.clone(), v.clone()];
                        args[which] = t;
                        loss(&args[0], &args[1], &args[2])
                    };
                    let numeric = (bump(1e-6) - bump(-1e-6)) / 2e-6;
                    prop_assert!((a - numeric).abs() < 1e-6 * numeric.abs().max(1.0), "{} vs {}", a, numeric);
                }
            }
        }
    }
}
