//! Conv1d forward and backward over contiguous `(batch, channels, len)` buffers: per sample, im2col into a
//! small buffer that stays in cache, then one matrix product. Samples run in parallel; the weight
//! gradient is summed over fixed chunks of samples in a fixed order, so results do not depend on the
//! thread count or on scheduling.

use rayon::prelude::*;

use super::Real;
use super::gemm::{View, ViewMut, matmul};

/// Samples per weight-gradient partial sum. Fixed, so the summation order never changes.
const CHUNK: usize = 4;

/// The sizes of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub len: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_len: usize,
}

impl ConvGeom {
    /// Rows of the im2col matrix: input channels × kernel taps.
    fn taps(&self) -> usize {
        self.cin * self.kernel
    }

    /// Output positions `o` whose tap `j` reads inside the input: `0 ≤ o·s + j − p < len`.
    fn valid(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if p > j { (p - j).div_ceil(s) } else { 0 };
        let hi = if self.len + p > j { ((self.len + p - j - 1) / s + 1).min(self.out_len) } else { 0 };
        (lo.min(hi), hi)
    }

    /// Writes the im2col matrix `(cin·kernel, out_len)` of one sample `(cin, len)`.
    fn im2col<T: Real>(&self, x: &[T], cols: &mut [T]) {
        let (s, p, ol) = (self.stride, self.padding, self.out_len);
        for (ci, row) in x.chunks_exact(self.len).enumerate() {
            for j in 0..self.kernel {
                let dst = &mut cols[(ci * self.kernel + j) * ol..][..ol];
                let (lo, hi) = self.valid(j);
                dst[..lo].fill(T::zero());
                dst[hi..].fill(T::zero());
                if lo < hi {
                    let start = lo * s + j - p;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&row[start..start + hi - lo]);
                    } else {
                        for (d, v) in dst[lo..hi].iter_mut().zip(row[start..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }

    /// Adds the im2col-shaped gradient `cols` back onto one sample's input gradient `(cin, len)`.
    fn col2im<T: Real>(&self, cols: &[T], dx: &mut [T]) {
        let (s, p, ol) = (self.stride, self.padding, self.out_len);
        for (ci, row) in dx.chunks_exact_mut(self.len).enumerate() {
            for j in 0..self.kernel {
                let src = &cols[(ci * self.kernel + j) * ol..][..ol];
                let (lo, hi) = self.valid(j);
                if lo < hi {
                    let start = lo * s + j - p;
                    for (d, v) in row[start..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias`, then ReLU when `relu`. `x` is `(batch, cin, len)`, `w` `(cout, cin, kernel)`,
/// `bias` `(cout)`; returns `(batch, cout, out_len)`.
pub fn forward<T: Real>(g: &ConvGeom, x: &[T], w: &[T], bias: &[T], relu: bool) -> Vec<T> {
    let (taps, ol) = (g.taps(), g.out_len);
    let mut y = vec![T::zero(); g.batch * g.cout * ol];
    y.par_chunks_mut(g.cout * ol).zip(x.par_chunks(g.cin * g.len)).for_each_init(
        || vec![T::zero(); taps * ol],
        |cols, (yb, xb)| {
            g.im2col(xb, cols);
            for (row, b) in yb.chunks_exact_mut(ol).zip(bias) {
                row.fill(*b);
            }
            matmul(
                ViewMut::rows(yb, g.cout, ol, ol),
                true,
                View::rows(w, g.cout, taps),
                View::rows(cols, taps, ol),
            );
            if relu {
                for v in yb.iter_mut() {
                    *v = v.relu();
                }
            }
        },
    );
    y
}

/// Gradients of [`forward`] (without ReLU) for the output gradient `dy`: `(dx, dw, dbias)`.
pub fn backward<T: Real>(g: &ConvGeom, x: &[T], w: &[T], dy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (taps, ol) = (g.taps(), g.out_len);
    let mut dx = vec![T::zero(); g.batch * g.cin * g.len];
    // One partial (cout, taps + 1) per chunk of samples; the last column is the bias gradient.
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(CHUNK * g.cin * g.len)
        .zip(x.par_chunks(CHUNK * g.cin * g.len))
        .zip(dy.par_chunks(CHUNK * g.cout * ol))
        .map(|((dxc, xc), dyc)| {
            let mut acc = vec![T::zero(); g.cout * (taps + 1)];
            let mut cols = vec![T::zero(); taps * ol];
            for ((dxb, xb), dyb) in dxc
                .chunks_exact_mut(g.cin * g.len)
                .zip(xc.chunks_exact(g.cin * g.len))
                .zip(dyc.chunks_exact(g.cout * ol))
            {
                let dy_view = View::rows(dyb, g.cout, ol);
                g.im2col(xb, &mut cols);
                matmul(
                    ViewMut::rows(&mut acc, g.cout, taps, taps + 1),
                    true,
                    dy_view,
                    View::rows(&cols, taps, ol).t(),
                );
                for (co, row) in dyb.chunks_exact(ol).enumerate() {
                    acc[co * (taps + 1) + taps] += row.iter().fold(T::zero(), |a, v| a + *v);
                }
                matmul(
                    ViewMut::rows(&mut cols, taps, ol, ol),
                    false,
                    View::rows(w, g.cout, taps).t(),
                    dy_view,
                );
                g.col2im(&cols, dxb);
            }
            acc
        })
        .collect();
    let mut total = vec![T::zero(); g.cout * (taps + 1)];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += *v;
        }
    }
    let mut dw = Vec::with_capacity(g.cout * taps);
    let mut db = Vec::with_capacity(g.cout);
    for row in total.chunks_exact(taps + 1) {
        dw.extend_from_slice(&row[..taps]);
        db.push(row[taps]);
    }
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, term by term.
    fn direct(g: &ConvGeom, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; g.batch * g.cout * g.out_len];
        for n in 0..g.batch {
            for co in 0..g.cout {
                for o in 0..g.out_len {
                    let mut acc = b[co];
                    for ci in 0..g.cin {
                        for j in 0..g.kernel {
                            let pos = (o * g.stride + j) as isize - g.padding as isize;
                            if pos >= 0 && (pos as usize) < g.len {
                                acc += w[(co * g.cin + ci) * g.kernel + j]
                                    * x[(n * g.cin + ci) * g.len + pos as usize];
                            }
                        }
                    }
                    y[(n * g.cout + co) * g.out_len + o] = acc;
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn forward_matches_the_definition(
            batch in 1usize..10, cin in 1usize..4, cout in 1usize..4, kernel in 1usize..6,
            stride in 1usize..4, padding in 0usize..4, extra in 0usize..9, relu in any::<bool>(),
        ) {
            let len = kernel.saturating_sub(2 * padding).max(1) + extra;
            let out_len = (len + 2 * padding - kernel) / stride + 1;
            let g = ConvGeom { batch, cin, cout, len, kernel, stride, padding, out_len };
            let val = |i: usize, k: usize| ((i * 7919 + k * 104_729) % 211) as f64 / 105.0 - 1.0;
            let x: Vec<f64> = (0..batch * cin * len).map(|i| val(i, 1)).collect();
            let w: Vec<f64> = (0..cout * cin * kernel).map(|i| val(i, 2)).collect();
            let b: Vec<f64> = (0..cout).map(|i| val(i, 3)).collect();
            let got = forward(&g, &x, &w, &b, relu);
            for (a, e) in got.iter().zip(direct(&g, &x, &w, &b)) {
                let e = if relu { e.max(0.0) } else { e };
                prop_assert!((a - e).abs() < 1e-12);
            }
        }
    }
}
