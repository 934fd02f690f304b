//! Training-mode BatchNorm1d followed by ReLU over contiguous `(batch, channels, len)` buffers: batch
//! statistics per channel, the normalised and rectified output, and the backward pass. Each channel's
//! sums are taken by one task in a fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::Real;

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

/// The sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnGeom {
    pub batch: usize,
    pub channels: usize,
    pub len: usize,
}

impl BnGeom {
    /// Values per channel.
    pub fn count(&self) -> usize {
        self.batch * self.len
    }

    fn rows<'a, T>(&self, data: &'a [T], c: usize) -> impl Iterator<Item = &'a [T]> + use<'a, T> {
        let (channels, len) = (self.channels, self.len);
        (0..self.batch).map(move |b| &data[(b * channels + c) * len..][..len])
    }
}

/// Per channel: batch mean and biased variance over `(batch, len)`.
pub fn stats<T: Real>(g: &BnGeom, y: &[T]) -> Vec<(f64, f64)> {
    let n = g.count() as f64;
    (0..g.channels)
        .into_par_iter()
        .map(|c| {
            let mean = g.rows(y, c).map(|r| row_sum(r, |v| v)).sum::<f64>() / n;
            let m = T::from_f64(mean);
            let var = g.rows(y, c).map(|r| row_sum(r, |v| (v - m) * (v - m))).sum::<f64>() / n;
            (mean, var)
        })
        .collect()
}

/// `out = max(0, (y − mean)·invstd·gamma + beta)` per channel.
pub fn forward<T: Real>(g: &BnGeom, y: &[T], mean_invstd: &[(f64, f64)], gamma: &[T], beta: &[T]) -> Vec<T> {
    let coef: Vec<(T, T)> = mean_invstd
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, invstd), (ga, be))| {
            let a = invstd * ga.to_f64();
            (T::from_f64(a), T::from_f64(be.to_f64() - mean * a))
        })
        .collect();
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(g.channels * g.len).zip(y.par_chunks(g.channels * g.len)).for_each(|(ob, yb)| {
        for ((orow, yrow), &(a, b)) in ob.chunks_exact_mut(g.len).zip(yb.chunks_exact(g.len)).zip(&coef) {
            for (o, v) in orow.iter_mut().zip(yrow) {
                *o = (*v * a + b).relu();
            }
        }
    });
    out
}

/// Gradients of [`forward`] for the output gradient `dout`: `(dy, dgamma, dbeta)`. `out` is the forward's
/// result (its sign gives the ReLU mask).
pub fn backward<T: Real>(
    g: &BnGeom,
    y: &[T],
    out: &[T],
    dout: &[T],
    mean_invstd: &[(f64, f64)],
    gamma: &[f64],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = g.count() as f64;
    let masked = |o: T, d: T| if o > T::zero() { d } else { T::zero() };
    // Per channel: Σ g and Σ g·(y − mean), with g the ReLU-masked output gradient.
    let sums: Vec<(f64, f64)> = (0..g.channels)
        .into_par_iter()
        .map(|c| {
            let m = T::from_f64(mean_invstd[c].0);
            let (mut sg, mut sgy) = (0.0, 0.0);
            for ((yr, or), dr) in g.rows(y, c).zip(g.rows(out, c)).zip(g.rows(dout, c)) {
                sg += row_sum2(or, dr, masked);
                sgy += row_sum3(or, dr, yr, |o, d, v| masked(o, d) * (v - m));
            }
            (sg, sgy)
        })
        .collect();
    // dy = k·g + c0 + c1·y with k = gamma·invstd, c1 = −k·invstd²·Σg(y−mean)/n, c0 = −k·Σg/n − c1·mean.
    let coef: Vec<(T, T, T)> = sums
        .iter()
        .zip(mean_invstd)
        .zip(gamma)
        .map(|((&(sg, sgy), &(mean, invstd)), ga)| {
            let k = ga * invstd;
            let c1 = -k * invstd * invstd * sgy / n;
            let c0 = -k * sg / n - c1 * mean;
            (T::from_f64(k), T::from_f64(c0), T::from_f64(c1))
        })
        .collect();
    let mut dy = vec![T::zero(); y.len()];
    let block = g.channels * g.len;
    dy.par_chunks_mut(block)
        .zip(y.par_chunks(block))
        .zip(out.par_chunks(block).zip(dout.par_chunks(block)))
        .for_each(|((db, yb), (ob, gb))| {
            let rows = db.chunks_exact_mut(g.len).zip(yb.chunks_exact(g.len));
            for (((drow, yrow), (orow, grow)), &(k, c0, c1)) in
                rows.zip(ob.chunks_exact(g.len).zip(gb.chunks_exact(g.len))).zip(&coef)
            {
                for (((d, yv), o), gv) in drow.iter_mut().zip(yrow).zip(orow).zip(grow) {
                    *d = k * masked(*o, *gv) + c0 + c1 * *yv;
                }
            }
        });
    let dgamma =
        sums.iter().zip(mean_invstd).map(|(&(_, sgy), &(_, invstd))| T::from_f64(sgy * invstd)).collect();
    let dbeta = sums.iter().map(|&(sg, _)| T::from_f64(sg)).collect();
    (dy, dgamma, dbeta)
}
