//! Conv1d forward and backward over contiguous `(batch, channels, len)` buffers: per sample, im2col into a
//! small buffer that stays in cache, then one matrix product. Samples run in parallel; the weight
//! gradient is summed over fixed chunks of samples in a fixed order, so results do not depend on the
//! thread count or on scheduling.

use rayon::prelude::*;

use super::Real;
use super::gemm::{View, ViewMut, matmul};

/// Samples per weight-gradient partial sum. Fixed, so the summation order never changes.
pub const CHUNK: usize = 4;

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

    /// Length of one phase of a de-interleaved padded row: enough for every tap's run of outputs.
    fn phase_len(&self) -> usize {
        self.out_len + (self.kernel - 1) / self.stride
    }

    /// Scratch for [`Self::im2col`] and [`Self::col2im`]: one de-interleaved row.
    fn scratch<T: Real>(&self) -> Vec<T> {
        vec![T::zero(); self.stride * self.phase_len()]
    }

    /// Where phase `r` meets the unpadded row: entries `q` in `lo..lo + n` read `row[start + (q − lo)·s]`;
    /// the rest fall in the padding. (`padded[q·s + r] = row[q·s + r − padding]`.)
    fn phase_span(&self, r: usize) -> (usize, usize, usize) {
        let (s, p, q_len) = (self.stride, self.padding, self.phase_len());
        // The first q with q·s + r ≥ p.
        let lo = p.saturating_sub(r).div_ceil(s);
        if lo >= q_len {
            return (q_len, 0, 0);
        }
        let start = lo * s + r - p;
        match self.len.saturating_sub(start).div_ceil(s).min(q_len - lo) {
            0 => (lo, 0, 0),
            n => (lo, start, n),
        }
    }

    /// De-interleaves one zero-padded input row into `stride` phases: `phases[r][q] = padded[q·s + r]`.
    /// Tap `j` of output `o` reads `padded[o·s + j] = phases[j mod s][o + j div s]`, so every tap's
    /// outputs form one contiguous run.
    fn split_phases<T: Real>(&self, row: &[T], phases: &mut [T]) {
        for (r, phase) in phases.chunks_exact_mut(self.phase_len()).enumerate() {
            let (lo, start, n) = self.phase_span(r);
            let (head, rest) = phase.split_at_mut(lo);
            let (body, tail) = rest.split_at_mut(n);
            head.fill(T::zero());
            tail.fill(T::zero());
            match self.stride {
                1 => body.copy_from_slice(&row[start..start + n]),
                // Every second value (the model's strides): pairs, which the compiler vectorises.
                2 => {
                    let src = &row[start..];
                    let pairs = src.chunks_exact(2);
                    let last = pairs.remainder().first().copied();
                    for (d, pair) in body.iter_mut().zip(pairs) {
                        *d = pair[0];
                    }
                    if let (Some(v), true) = (last, n > src.len() / 2) {
                        body[n - 1] = v;
                    }
                }
                s => {
                    for (d, v) in body.iter_mut().zip(row[start..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// Writes the im2col matrix `(cin·kernel, out_len)` of one sample `(cin, len)` into `cols`, whose
    /// rows start every `rs` elements (`rs ≥ out_len`: several samples can sit side by side).
    fn im2col<T: Real>(&self, x: &[T], cols: &mut [T], rs: usize, phases: &mut [T]) {
        let (s, k, ol, q_len) = (self.stride, self.kernel, self.out_len, self.phase_len());
        for (ci, row) in x.chunks_exact(self.len).enumerate() {
            self.split_phases(row, phases);
            for j in 0..k {
                cols[(ci * k + j) * rs..][..ol].copy_from_slice(&phases[(j % s) * q_len + j / s..][..ol]);
            }
        }
    }

    /// Adds the im2col-shaped gradient `cols` (rows every `rs` elements) back onto one sample's input
    /// gradient `(cin, len)`.
    fn col2im<T: Real>(&self, cols: &[T], rs: usize, dx: &mut [T], phases: &mut [T]) {
        let (s, k, ol, q_len) = (self.stride, self.kernel, self.out_len, self.phase_len());
        for (ci, row) in dx.chunks_exact_mut(self.len).enumerate() {
            phases.fill(T::zero());
            for j in 0..k {
                let src = &cols[(ci * k + j) * rs..][..ol];
                for (d, v) in phases[(j % s) * q_len + j / s..][..ol].iter_mut().zip(src) {
                    *d += *v;
                }
            }
            for (r, phase) in phases.chunks_exact(q_len).enumerate() {
                let (lo, start, n) = self.phase_span(r);
                for (d, v) in row[start..].iter_mut().step_by(s).zip(&phase[lo..lo + n]) {
                    *d += *v;
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
        || (vec![T::zero(); taps * ol], g.scratch()),
        |(cols, phases), (yb, xb)| {
            g.im2col(xb, cols, ol, phases);
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

/// Gradients of [`forward`] (without ReLU) for the output gradient `dy`: `(dx, dw, dbias)`; `dx` only
/// when `need_dx` (a network's first layer does not need it).
pub fn backward<T: Real>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    dy: &[T],
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let ol = g.out_len;
    backward_with(g, x, w, need_dx, |chunk, dyw| {
        let wide = dyw.len() / g.cout;
        let samples = dy[chunk * CHUNK * g.cout * ol..].chunks_exact(g.cout * ol).take(wide / ol);
        for (b, dyb) in samples.enumerate() {
            for (co, row) in dyb.chunks_exact(ol).enumerate() {
                dyw[co * wide + b * ol..][..ol].copy_from_slice(row);
            }
        }
    })
}

/// Samples in chunk `c` of a batch.
pub fn chunk_len(batch: usize, c: usize) -> usize {
    (batch - c * CHUNK).min(CHUNK)
}

/// Index of output `(b, co, 0)` in the chunk-wide layout of [`forward_wide`].
pub fn wide_index(g: &ConvGeom, b: usize, co: usize) -> usize {
    let (c, i) = (b / CHUNK, b % CHUNK);
    c * CHUNK * g.cout * g.out_len + co * chunk_len(g.batch, c) * g.out_len + i * g.out_len
}

/// `conv(x, w)` without bias in the chunk-wide layout: chunk `c` (samples `c·CHUNK..`, `n` of them) is a
/// `(cout, n·out_len)` matrix, the samples side by side; one matrix product per chunk.
pub fn forward_wide<T: Real>(g: &ConvGeom, x: &[T], w: &[T]) -> Vec<T> {
    let (taps, ol, x_step) = (g.taps(), g.out_len, g.cin * g.len);
    let mut y = vec![T::zero(); g.batch * g.cout * ol];
    y.par_chunks_mut(CHUNK * g.cout * ol).zip(x.par_chunks(CHUNK * x_step)).for_each_init(
        || (vec![T::zero(); taps * CHUNK * ol], g.scratch()),
        |(cols, phases), (yc, xc)| {
            let wide = xc.len() / x_step * ol;
            for (b, xb) in xc.chunks_exact(x_step).enumerate() {
                g.im2col(xb, &mut cols[b * ol..], wide, phases);
            }
            matmul(
                ViewMut::rows(yc, g.cout, wide, wide),
                false,
                View::rows(w, g.cout, taps),
                View::rows(cols, taps, wide),
            );
        },
    );
    y
}

/// The conv backward pass with the output gradient supplied per chunk: `fill_dy(c, dyw)` writes chunk
/// `c`'s gradient in the chunk-wide layout (`(cout, n·out_len)`). Per chunk, the weight gradient and
/// the input gradient are each one matrix product with a long inner dimension; the partial weight and
/// bias gradients are summed in chunk order. Returns `(dx if need_dx, dw, dbias)`.
pub fn backward_with<T: Real>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    need_dx: bool,
    fill_dy: impl Fn(usize, &mut [T]) + Sync,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let (taps, ol, x_step) = (g.taps(), g.out_len, g.cin * g.len);
    let parts: Vec<(Vec<T>, Vec<T>)> = x
        .par_chunks(CHUNK * x_step)
        .enumerate()
        .map(|(c, xc)| {
            let wide = xc.len() / x_step * ol;
            let mut cols = vec![T::zero(); taps * wide];
            let mut dyw = vec![T::zero(); g.cout * wide];
            let mut phases = g.scratch();
            fill_dy(c, &mut dyw);
            for (b, xb) in xc.chunks_exact(x_step).enumerate() {
                g.im2col(xb, &mut cols[b * ol..], wide, &mut phases);
            }
            // (cout, taps + 1): the weight gradient and, in the last column, the bias gradient.
            let mut acc = vec![T::zero(); g.cout * (taps + 1)];
            let dy_view = View::rows(&dyw, g.cout, wide);
            matmul(
                ViewMut::rows(&mut acc, g.cout, taps, taps + 1),
                false,
                dy_view,
                View::rows(&cols, taps, wide).t(),
            );
            for (co, row) in dyw.chunks_exact(wide).enumerate() {
                acc[co * (taps + 1) + taps] = row.iter().fold(T::zero(), |a, v| a + *v);
            }
            let mut dxc = Vec::new();
            if need_dx {
                dxc = vec![T::zero(); xc.len()];
                matmul(
                    ViewMut::rows(&mut cols, taps, wide, wide),
                    false,
                    View::rows(w, g.cout, taps).t(),
                    dy_view,
                );
                for (b, dxb) in dxc.chunks_exact_mut(x_step).enumerate() {
                    g.col2im(&cols[b * ol..], wide, dxb, &mut phases);
                }
            }
            (acc, dxc)
        })
        .collect();
    let mut total = vec![T::zero(); g.cout * (taps + 1)];
    let mut dx = Vec::with_capacity(if need_dx { x.len() } else { 0 });
    for (acc, dxc) in &parts {
        for (t, v) in total.iter_mut().zip(acc) {
            *t += *v;
        }
        dx.extend_from_slice(dxc);
    }
    let mut dw = Vec::with_capacity(g.cout * taps);
    let mut db = Vec::with_capacity(g.cout);
    for row in total.chunks_exact(taps + 1) {
        dw.extend_from_slice(&row[..taps]);
        db.push(row[taps]);
    }
    (need_dx.then_some(dx), dw, db)
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
