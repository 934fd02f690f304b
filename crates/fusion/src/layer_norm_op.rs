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

/// Rows whose statistics are computed together: each row's sums are chains of dependent additions (one per
/// feature), which the CPU overlaps across the rows of a group; each row's own additions stay in the same
/// order, so the results are the same bits whatever the grouping (tested).
const GROUP: usize = 4;

/// Mean and `1/√(var + ε)` of each of the `G` rows of `dim` values in `rows`, in f64.
#[inline(always)]
fn moments<T: WithDType, const G: usize>(rows: &[T], dim: usize, eps: f64) -> [(f64, f64); G] {
    let n = dim as f64;
    // `-0.0` is where `Iterator::sum` starts, which these sums replaced.
    let mut sum = [-0.0f64; G];
    for k in 0..dim {
        for (r, s) in sum.iter_mut().enumerate() {
            *s += rows[r * dim + k].to_f64();
        }
    }
    let mean = sum.map(|s| s / n);
    let mut sq = [-0.0f64; G];
    for k in 0..dim {
        for (r, s) in sq.iter_mut().enumerate() {
            *s += (rows[r * dim + k].to_f64() - mean[r]).powi(2);
        }
    }
    std::array::from_fn(|r| (mean[r], 1.0 / (sq[r] / n + eps).sqrt()))
}

/// The layer norm of `G` rows of `x` into `out`.
#[inline(always)]
fn normalise<T: WithDType, const G: usize>(x: &[T], out: &mut [T], dim: usize, eps: f64, g: &[T], b: &[T]) {
    let stats = moments::<T, G>(x, dim, eps);
    for ((orow, xrow), (mean, rstd)) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(stats) {
        for (((o, x), g), b) in orow.iter_mut().zip(xrow).zip(g).zip(b) {
            *o = T::from_f64((x.to_f64() - mean) * rstd * g.to_f64() + b.to_f64());
        }
    }
}

/// Per-task buffers and sums of the backward pass.
struct Partial {
    /// `Σ dy ⊙ x̂` and `Σ dy` over the task's rows.
    dg: Vec<f64>,
    db: Vec<f64>,
    /// `x̂` and `dy ⊙ γ` of a group of rows.
    xhat: Vec<f64>,
    gy: Vec<f64>,
}

/// The backward pass of `G` rows (see [`LayerNormOp::bwd`]): `dx` of the rows, their terms of `dγ`, `dβ`
/// added to `part` in row order.
#[inline(always)]
fn backward_rows<T: WithDType, const G: usize>(
    (x, dy, dx): (&[T], &[T], &mut [T]),
    dim: usize,
    eps: f64,
    g: &[T],
    part: &mut Partial,
) {
    let stats = moments::<T, G>(x, dim, eps);
    let (mut a, mut c) = ([0.0f64; G], [0.0f64; G]);
    let Partial { dg, db, xhat, gy } = part;
    for k in 0..dim {
        for (r, (mean, rstd)) in stats.iter().enumerate() {
            let i = r * dim + k;
            xhat[i] = (x[i].to_f64() - mean) * rstd;
            gy[i] = dy[i].to_f64() * g[k].to_f64();
            a[r] += gy[i];
            c[r] += gy[i] * xhat[i];
            dg[k] += dy[i].to_f64() * xhat[i];
            db[k] += dy[i].to_f64();
        }
    }
    for (r, (_, rstd)) in stats.iter().enumerate() {
        let (a, c) = (a[r] / dim as f64, c[r] / dim as f64);
        for k in 0..dim {
            let i = r * dim + k;
            dx[i] = T::from_f64(rstd * (gy[i] - a - xhat[i] * c));
        }
    }
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
                let mut groups = ob.chunks_exact_mut(GROUP * dim).zip(xb.chunks_exact(GROUP * dim));
                for (og, xg) in &mut groups {
                    normalise::<T, GROUP>(xg, og, dim, self.eps, g, b);
                }
                let done = ob.len() / (GROUP * dim) * GROUP * dim;
                for (orow, xrow) in ob[done..].chunks_exact_mut(dim).zip(xb[done..].chunks_exact(dim)) {
                    normalise::<T, 1>(xrow, orow, dim, self.eps, g, b);
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
                    let mut part = Partial {
                        dg: vec![0.0; dim],
                        db: vec![0.0; dim],
                        xhat: vec![0.0; GROUP * dim],
                        gy: vec![0.0; GROUP * dim],
                    };
                    let whole = dxb.len() / (GROUP * dim) * GROUP * dim;
                    let (dx_groups, dx_rest) = dxb.split_at_mut(whole);
                    for ((dxg, xg), dyg) in dx_groups
                        .chunks_exact_mut(GROUP * dim)
                        .zip(xb.chunks_exact(GROUP * dim))
                        .zip(dyb.chunks_exact(GROUP * dim))
                    {
                        backward_rows::<T, GROUP>((xg, dyg, dxg), dim, self.eps, g, &mut part);
                    }
                    for ((dxr, xr), dyr) in dx_rest.chunks_exact_mut(dim).zip(xb[whole..].chunks_exact(dim)).zip(dyb[whole..].chunks_exact(dim)) {
                        backward_rows::<T, 1>((xr, dyr, dxr), dim, self.eps, g, &mut part);
                    }
                    (part.dg, part.db)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    /// The op's formulas one row at a time, with `Iterator::sum`: the reference for the grouped rows.
    fn reference(
        x: &[f32],
        dy: &[f32],
        g: &[f32],
        b: &[f32],
        eps: f64,
    ) -> (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f64>) {
        let dim = g.len();
        let (mut y, mut dx, mut dg, mut db) = (vec![], vec![], vec![0.0; dim], vec![0.0; dim]);
        // Per block of rows, partial sums of dγ and dβ added in block order, as the op.
        for (xb, dyb) in x.chunks(BLOCK * dim).zip(dy.chunks(BLOCK * dim)) {
            let (mut pg, mut pb) = (vec![0.0; dim], vec![0.0; dim]);
            for (xr, dyr) in xb.chunks_exact(dim).zip(dyb.chunks_exact(dim)) {
                let n = dim as f64;
                let mean = xr.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
                let var = xr.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mut a, mut c) = (0.0, 0.0);
                let (mut xhat, mut gy) = (vec![0.0; dim], vec![0.0; dim]);
                for k in 0..dim {
                    y.push(((f64::from(xr[k]) - mean) * rstd * f64::from(g[k]) + f64::from(b[k])) as f32);
                    xhat[k] = (f64::from(xr[k]) - mean) * rstd;
                    gy[k] = f64::from(dyr[k]) * f64::from(g[k]);
                    a += gy[k];
                    c += gy[k] * xhat[k];
                    pg[k] += f64::from(dyr[k]) * xhat[k];
                    pb[k] += f64::from(dyr[k]);
                }
                let (a, c) = (a / n, c / n);
                dx.extend((0..dim).map(|k| (rstd * (gy[k] - a - xhat[k] * c)) as f32));
            }
            dg.iter_mut().zip(&pg).for_each(|(t, p)| *t += p);
            db.iter_mut().zip(&pb).for_each(|(t, p)| *t += p);
        }
        (y, dx, dg, db)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A gradient as candle's backward pass hands it on: added to zeros (so `-0` becomes `0`).
    fn from_zero(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| 0.0 + x).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Rows taken four at a time give the bits of one row at a time: forward, dx, dγ and dβ, for row
        /// counts around the group and block sizes and rows of zeros of either sign.
        #[test]
        fn grouped_rows_are_single_rows_bit_for_bit(rows in 1usize..300, dim in 1usize..70, seed in 0u64..1000) {
            let val = |i: usize, s: u64| -> f32 {
                let r = (i as u64 * 7919 + s * 104_729) % 1009;
                if (i / dim) % 17 == 3 { if r.is_multiple_of(2) { 0.0 } else { -0.0 } } else { r as f32 / 97.0 - 5.0 }
            };
            let x: Vec<f32> = (0..rows * dim).map(|i| val(i, seed)).collect();
            let dy: Vec<f32> = (0..rows * dim).map(|i| val(i, seed + 3) * 0.1).collect();
            let g: Vec<f32> = (0..dim).map(|i| 1.0 + val(i, seed + 5) * 0.01).collect();
            let b: Vec<f32> = (0..dim).map(|i| val(i, seed + 9) * 0.01).collect();
            let eps = 1e-5;
            let (y_ref, dx_ref, dg_ref, db_ref) = reference(&x, &dy, &g, &b, eps);
            let dev = Device::Cpu;
            let xv = Var::from_vec(x, (rows, dim), &dev).unwrap();
            let (gv, bv) = (Var::from_vec(g, dim, &dev).unwrap(), Var::from_vec(b, dim, &dev).unwrap());
            let y = xv.apply_op3(gv.as_tensor(), bv.as_tensor(), LayerNormOp { eps }).unwrap();
            let r = Tensor::from_vec(dy, (rows, dim), &dev).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().ok()
                .unwrap_or_else(|| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap());
            prop_assert_eq!(bits(&y.flatten_all().unwrap().to_vec1::<f32>().unwrap()), bits(&y_ref));
            prop_assert_eq!(bits(&get(&xv)), bits(&from_zero(&dx_ref)));
            let cast = |v: Vec<f64>| from_zero(&v.into_iter().map(|x| x as f32).collect::<Vec<f32>>());
            prop_assert_eq!(bits(&get(&gv)), bits(&cast(dg_ref)));
            prop_assert_eq!(bits(&get(&bv)), bits(&cast(db_ref)));
        }
    }
}
