//! [`crate::LayerNorm`] on the CPU as one candle custom op with its backward pass: one pass over each row
//! instead of eight candle ops (each a full pass, an allocation and a thread-pool dispatch), which is most
//! of what a layer norm costs on the short sequences of one streamed window. Row statistics and the affine
//! step are computed in f64 whatever the element type; the rows are split into fixed blocks, so the result
//! does not depend on the thread count.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType, bail};
use encoders::cpu_op::{contiguous, cpu_storage, dispatch_float as dispatch, tensor_from};
use rayon::prelude::*;

/// Rows per parallel task (and per partial sum of the γ and β gradients).
const BLOCK: usize = 64;

/// `γ ⊙ (x − mean) / √(var + ε) + β` over the last axis of `x`, with `(x, γ, β)` as the op's operands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerNormOp {
    pub(crate) eps: f64,
}

/// Mean and `1/√(var + ε)` of one row, in f64.
fn moments<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|x| x.to_f64()).sum::<f64>() / n;
    let var = row.iter().map(|x| (x.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl LayerNormOp {
    fn dim(l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<usize> {
        let dim = l1.shape().dims().last().copied().unwrap_or(0);
        if dim == 0 || l2.shape().dims() != [dim] || l3.shape().dims() != [dim] {
            bail!("layer norm: x {:?}, weight {:?}, bias {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        Ok(dim)
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "emofuse-layer-norm"
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
        let dim = Self::dim(l1, l2, l3)?;
        dispatch!(s1, T => {
            let x = contiguous::<T>(s1, l1, "layer norm input")?;
            let (g, b) = (contiguous::<T>(s2, l2, "layer norm weight")?, contiguous::<T>(s3, l3, "layer norm bias")?);
            let mut out = encoders::cpu_op::zeros::<T>(x.len());
            out.par_chunks_mut(BLOCK * dim).zip(x.par_chunks(BLOCK * dim)).for_each(|(ob, xb)| {
                for (orow, xrow) in ob.chunks_exact_mut(dim).zip(xb.chunks_exact(dim)) {
                    let (mean, rstd) = moments(xrow, self.eps);
                    for (((o, x), g), b) in orow.iter_mut().zip(xrow).zip(g).zip(b) {
                        *o = T::from_f64((x.to_f64() - mean) * rstd * g.to_f64() + b.to_f64());
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    /// With `x̂ = (x − mean)·r`, `r = 1/√(var + ε)` and `gᵧ = dy ⊙ γ`:
    /// `dx = r·(gᵧ − mean(gᵧ) − x̂·mean(gᵧ ⊙ x̂))`, `dγ = Σ_rows dy ⊙ x̂`, `dβ = Σ_rows dy`.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, weight, grad) = (x.contiguous()?, weight.contiguous()?, grad.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let dim = Self::dim(xl, wl, bias.layout())?;
        if gl.shape() != xl.shape() {
            bail!("layer norm backward: gradient {:?} does not match the input {:?}", gl.shape(), xl.shape());
        }
        let (xs, ws, gs) = (cpu_storage(&xs)?, cpu_storage(&ws)?, cpu_storage(&gs)?);
        let (dx, dg, db) = dispatch!(xs, T => {
            let x = contiguous::<T>(xs, xl, "layer norm input")?;
            let g = contiguous::<T>(ws, wl, "layer norm weight")?;
            let dy = contiguous::<T>(gs, gl, "layer norm output gradient")?;
            let mut dx = encoders::cpu_op::zeros::<T>(x.len());
            // Per block of rows: dx, and that block's partial sums of dγ and dβ (added in block order).
            let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
                .par_chunks_mut(BLOCK * dim)
                .zip(x.par_chunks(BLOCK * dim))
                .zip(dy.par_chunks(BLOCK * dim))
                .map(|((dxb, xb), dyb)| {
                    let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
                    let (mut xhat, mut gy) = (vec![0.0; dim], vec![0.0; dim]);
                    for ((dxr, xr), dyr) in dxb.chunks_exact_mut(dim).zip(xb.chunks_exact(dim)).zip(dyb.chunks_exact(dim)) {
                        let (mean, rstd) = moments(xr, self.eps);
                        let (mut a, mut c) = (0.0, 0.0);
                        for k in 0..dim {
                            xhat[k] = (xr[k].to_f64() - mean) * rstd;
                            gy[k] = dyr[k].to_f64() * g[k].to_f64();
                            a += gy[k];
                            c += gy[k] * xhat[k];
                            dg[k] += dyr[k].to_f64() * xhat[k];
                            db[k] += dyr[k].to_f64();
                        }
                        let (a, c) = (a / dim as f64, c / dim as f64);
                        for k in 0..dim {
                            dxr[k] = T::from_f64(rstd * (gy[k] - a - xhat[k] * c));
                        }
                    }
                    (dg, db)
                })
                .collect();
            let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
            for (pg, pb) in &partials {
                dg.iter_mut().zip(pg).for_each(|(t, p)| *t += p);
                db.iter_mut().zip(pb).for_each(|(t, p)| *t += p);
            }
            let cast = |v: Vec<f64>| T::to_cpu_storage_owned(v.into_iter().map(T::from_f64).collect());
            (T::to_cpu_storage_owned(dx), cast(dg), cast(db))
        });
        Ok((
            Some(tensor_from(dx, x.dims(), &x)?),
            Some(tensor_from(dg, &[dim], &weight)?),
            Some(tensor_from(db, &[dim], &weight)?),
        ))
    }
}
