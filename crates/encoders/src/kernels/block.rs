//! One encoder block in training mode, conv1d → BatchNorm1d (batch statistics) → ReLU, as one pass each
//! way. The conv output stays inside the op in the chunk-wide layout of [`conv::forward_wide`] (rows of
//! one channel contiguous per chunk), so the batch statistics read contiguous rows and the backward pass
//! writes the conv's output gradient straight into the layout its matrix products want. Each channel's
//! sums are taken by one task in a fixed order: results do not depend on the thread count.
//!
//! The conv bias does not reach the output here (BatchNorm removes the mean); it enters the running mean
//! and receives the gradient Σ dy, which is zero up to rounding, as in PyTorch.

use rayon::prelude::*;

use super::Real;
use super::conv::{self, ConvGeom, wide_index};

/// Independent partial sums per row: enough for the compiler to vectorise, few enough that each lane
/// adds only a handful of values (rows here are at most a few hundred long).
const LANES: usize = 16;

fn lane_sum<T: Real>(values: impl Iterator<Item = T>) -> f64 {
    let mut acc = [T::zero(); LANES];
    let mut i = 0;
    for v in values {
        acc[i] += v;
        i = (i + 1) % LANES;
    }
    acc.iter().map(|v| v.to_f64()).sum()
}

/// A row's sum with `LANES` independent accumulators.
fn row_sum<T: Real>(row: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut acc = [T::zero(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    acc.iter().map(|v| v.to_f64()).sum::<f64>() + lane_sum(chunks.remainder().iter().map(|v| f(*v)))
}

/// A pair of rows' sum of `f(a, b)` with `LANES` independent accumulators.
fn row_sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> f64 {
    let mut acc = [T::zero(); LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, u), v) in acc.iter_mut().zip(x).zip(y) {
            *s += f(*u, *v);
        }
    }
    acc.iter().map(|v| v.to_f64()).sum::<f64>()
        + lane_sum(ca.remainder().iter().zip(cb.remainder()).map(|(u, v)| f(*u, *v)))
}

/// Three rows' sum of `f(a, b, c)` with `LANES` independent accumulators.
fn row_sum3<T: Real>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> f64 {
    let mut acc = [T::zero(); LANES];
    let (mut ca, mut cb, mut cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        for (((s, u), v), w) in acc.iter_mut().zip(x).zip(y).zip(z) {
            *s += f(*u, *v, *w);
        }
    }
    let rest = ca.remainder().iter().zip(cb.remainder()).zip(cc.remainder());
    acc.iter().map(|v| v.to_f64()).sum::<f64>() + lane_sum(rest.map(|((u, v), w)| f(*u, *v, *w)))
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Clone)]
pub struct Saved<T> {
    /// The conv output without bias, chunk-wide layout.
    pub y: Vec<T>,
    /// Per channel: batch mean (without bias) and biased variance of `y`.
    pub mean_var: Vec<(f64, f64)>,
}

/// Per channel `(mean, invstd)`.
fn mean_invstd(mean_var: &[(f64, f64)], eps: f64) -> Vec<(f64, f64)> {
    mean_var.iter().map(|&(m, v)| (m, 1.0 / (v + eps).sqrt())).collect()
}

/// `out = relu(batchnorm(conv(x, w)))` with batch statistics; `out` is `(batch, cout, out_len)`.
pub fn forward<T: Real>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
) -> (Vec<T>, Saved<T>) {
    let ol = g.out_len;
    let y = conv::forward_wide(g, x, w);
    let count = (g.batch * ol) as f64;
    let yr: &[T] = &y;
    let rows = |c: usize| (0..g.batch).map(move |b| &yr[wide_index(g, b, c)..][..ol]);
    let mean_var: Vec<(f64, f64)> = (0..g.cout)
        .into_par_iter()
        .map(|c| {
            let mean = rows(c).map(|r| row_sum(r, |v| v)).sum::<f64>() / count;
            let m = T::from_f64(mean);
            let var = rows(c).map(|r| row_sum(r, |v| (v - m) * (v - m))).sum::<f64>() / count;
            (mean, var)
        })
        .collect();
    let coef: Vec<(T, T)> = mean_invstd(&mean_var, eps)
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, invstd), (ga, be))| {
            let a = invstd * ga.to_f64();
            (T::from_f64(a), T::from_f64(be.to_f64() - mean * a))
        })
        .collect();
    let mut out = super::zeros(g.batch * g.cout * ol);
    out.par_chunks_mut(g.cout * ol).enumerate().for_each(|(b, ob)| {
        for (c, (orow, &(a, s))) in ob.chunks_exact_mut(ol).zip(&coef).enumerate() {
            for (o, v) in orow.iter_mut().zip(&y[wide_index(g, b, c)..][..ol]) {
                *o = (*v * a + s).relu();
            }
        }
    });
    (out, Saved { y, mean_var })
}

/// Gradients of [`forward`] for `dout`: `(dx if need_dx, dw, dbias, dgamma, dbeta)`. `out` is the
/// forward's result (its sign is the ReLU mask).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward<T: Real>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    saved: &Saved<T>,
    out: &[T],
    dout: &[T],
    gamma: &[f64],
    eps: f64,
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let (ol, step) = (g.out_len, g.cout * g.out_len);
    let count = (g.batch * ol) as f64;
    let mi = mean_invstd(&saved.mean_var, eps);
    let y = &saved.y;
    let masked = |o: T, d: T| if o > T::zero() { d } else { T::zero() };
    // Per channel: Σ g and Σ g·(y − mean), with g the ReLU-masked output gradient.
    let sums: Vec<(f64, f64)> = (0..g.cout)
        .into_par_iter()
        .map(|c| {
            let m = T::from_f64(mi[c].0);
            let (mut sg, mut sgy) = (0.0, 0.0);
            for b in 0..g.batch {
                let (or, dr) = (&out[b * step + c * ol..][..ol], &dout[b * step + c * ol..][..ol]);
                sg += row_sum2(or, dr, masked);
                sgy += row_sum3(or, dr, &y[wide_index(g, b, c)..][..ol], |o, d, v| masked(o, d) * (v - m));
            }
            (sg, sgy)
        })
        .collect();
    // dy = k·g + c0 + c1·y with k = gamma·invstd, c1 = −k·invstd²·Σg(y−mean)/n, c0 = −k·Σg/n − c1·mean.
    let coef: Vec<(T, T, T)> = sums
        .iter()
        .zip(&mi)
        .zip(gamma)
        .map(|((&(sg, sgy), &(mean, invstd)), ga)| {
            let k = ga * invstd;
            let c1 = -k * invstd * invstd * sgy / count;
            let c0 = -k * sg / count - c1 * mean;
            (T::from_f64(k), T::from_f64(c0), T::from_f64(c1))
        })
        .collect();
    let (dx, dw, db) = conv::backward_with(g, x, w, need_dx, |chunk, dyw| {
        let first = chunk * conv::CHUNK;
        let wide = dyw.len() / g.cout;
        for b in first..first + wide / ol {
            for (c, &(k, c0, c1)) in coef.iter().enumerate() {
                let (or, dr) = (&out[b * step + c * ol..][..ol], &dout[b * step + c * ol..][..ol]);
                let yr = &y[wide_index(g, b, c)..][..ol];
                let dst = &mut dyw[c * wide + (b - first) * ol..][..ol];
                for (((d, o), gv), v) in dst.iter_mut().zip(or).zip(dr).zip(yr) {
                    *d = k * masked(*o, *gv) + c0 + c1 * *v;
                }
            }
        }
    });
    let dgamma = sums.iter().zip(&mi).map(|(&(_, sgy), &(_, invstd))| T::from_f64(sgy * invstd)).collect();
    let dbeta = sums.iter().map(|&(sg, _)| T::from_f64(sg)).collect();
    (dx, dw, db, dgamma, dbeta)
}
