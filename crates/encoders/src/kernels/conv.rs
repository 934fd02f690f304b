//! Convolution forward and backward over contiguous `(batch, channels, positions)` buffers: per sample,
//! im2col into a small buffer that stays in cache, then one matrix product. Samples run in parallel; the
//! weight gradient is summed over fixed chunks of samples in a fixed order, so results do not depend on
//! the thread count or on scheduling. [`ConvGeom`] is the 1-D geometry, [`Conv2dGeom`] the 2-D one; both
//! run through the same [`forward`] and [`backward`] via [`Im2col`].

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

/// The sizes of a convolution as a matrix product, and its im2col / col2im pair.
pub trait Im2col: Sync {
    /// `(batch, cin, cout)`.
    fn channels(&self) -> (usize, usize, usize);
    /// Input positions per channel (`len`, or `height·width`).
    fn in_positions(&self) -> usize;
    /// Output positions per channel.
    fn out_positions(&self) -> usize;
    /// Rows of the im2col matrix: input channels × kernel taps.
    fn taps(&self) -> usize;
    /// Scratch for [`Im2col::im2col`] and [`Im2col::col2im`].
    fn scratch<T: Real>(&self) -> Vec<T>;
    /// Writes the im2col matrix `(taps, out_positions)` of one sample `(cin, in_positions)` into `cols`,
    /// whose rows start every `rs` elements (`rs ≥ out_positions`: several samples can sit side by side).
    fn im2col<T: Real>(&self, x: &[T], cols: &mut [T], rs: usize, scratch: &mut [T]);
    /// Adds the im2col-shaped gradient `cols` (rows every `rs` elements) back onto one sample's input
    /// gradient `(cin, in_positions)`.
    fn col2im<T: Real>(&self, cols: &[T], rs: usize, dx: &mut [T], scratch: &mut [T]);
}

impl Im2col for ConvGeom {
    fn channels(&self) -> (usize, usize, usize) {
        (self.batch, self.cin, self.cout)
    }

    fn in_positions(&self) -> usize {
        self.len
    }

    fn out_positions(&self) -> usize {
        self.out_len
    }

    fn taps(&self) -> usize {
        self.cin * self.kernel
    }

    fn scratch<T: Real>(&self) -> Vec<T> {
        vec![T::zero(); self.stride * self.phase_len()]
    }

    fn im2col<T: Real>(&self, x: &[T], cols: &mut [T], rs: usize, phases: &mut [T]) {
        let (s, k, ol, q_len) = (self.stride, self.kernel, self.out_len, self.phase_len());
        for (ci, row) in x.chunks_exact(self.len).enumerate() {
            self.split_phases(row, phases);
            for j in 0..k {
                cols[(ci * k + j) * rs..][..ol].copy_from_slice(&phases[(j % s) * q_len + j / s..][..ol]);
            }
        }
    }

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

/// The sizes of one 2-D convolution call: square kernel, the same stride and zero padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl Conv2dGeom {
    /// For output positions `0..n` along an axis of `len` and kernel tap `j`: the range of outputs whose
    /// input `o·s + j − p` lies inside the axis.
    fn valid(&self, len: usize, n: usize, j: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(j).div_ceil(s).min(n);
        // o·s + j − p ≤ len − 1  ⇔  o ≤ (len − 1 + p − j) / s.
        let hi = (len + p).checked_sub(j + 1).map_or(0, |m| (m / s + 1).min(n));
        lo..hi.max(lo)
    }
}

impl Im2col for Conv2dGeom {
    fn channels(&self) -> (usize, usize, usize) {
        (self.batch, self.cin, self.cout)
    }

    fn in_positions(&self) -> usize {
        self.height * self.width
    }

    fn out_positions(&self) -> usize {
        self.out_height * self.out_width
    }

    fn taps(&self) -> usize {
        self.cin * self.kernel * self.kernel
    }

    fn scratch<T: Real>(&self) -> Vec<T> {
        Vec::new()
    }

    fn im2col<T: Real>(&self, x: &[T], cols: &mut [T], rs: usize, _: &mut [T]) {
        let (k, s, p, ow) = (self.kernel, self.stride, self.padding, self.out_width);
        for (ci, plane) in x.chunks_exact(self.in_positions()).enumerate() {
            for ki in 0..k {
                let rows = self.valid(self.height, self.out_height, ki);
                for kj in 0..k {
                    let cols_ok = self.valid(self.width, ow, kj);
                    let row = &mut cols[((ci * k + ki) * k + kj) * rs..][..self.out_positions()];
                    for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                        if !rows.contains(&oy) || cols_ok.is_empty() {
                            out.fill(T::zero());
                            continue;
                        }
                        let line = &plane[(oy * s + ki - p) * self.width..][..self.width];
                        out[..cols_ok.start].fill(T::zero());
                        out[cols_ok.end..].fill(T::zero());
                        let first = cols_ok.start * s + kj - p;
                        for (d, v) in out[cols_ok.clone()].iter_mut().zip(line[first..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }

    fn col2im<T: Real>(&self, cols: &[T], rs: usize, dx: &mut [T], _: &mut [T]) {
        let (k, s, p, ow) = (self.kernel, self.stride, self.padding, self.out_width);
        let positions = self.in_positions();
        for (ci, plane) in dx.chunks_exact_mut(positions).enumerate() {
            for ki in 0..k {
                let rows = self.valid(self.height, self.out_height, ki);
                for kj in 0..k {
                    let cols_ok = self.valid(self.width, ow, kj);
                    let row = &cols[((ci * k + ki) * k + kj) * rs..][..self.out_positions()];
                    if cols_ok.is_empty() {
                        continue;
                    }
                    for oy in rows.clone() {
                        let src = &row[oy * ow..][cols_ok.clone()];
                        let line = &mut plane[(oy * s + ki - p) * self.width..][..self.width];
                        let first = cols_ok.start * s + kj - p;
                        for (d, v) in line[first..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

impl ConvGeom {
    /// Length of one phase of a de-interleaved padded row: enough for every tap's run of outputs.
    fn phase_len(&self) -> usize {
        self.out_len + (self.kernel - 1) / self.stride
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
}

/// `y = conv(x, w) + bias`, then ReLU when `relu`. `x` is `(batch, cin, positions)`, `w` `(cout, taps)`,
/// `bias` `(cout)`; returns `(batch, cout, out_positions)`.
pub fn forward<T: Real>(g: &impl Im2col, x: &[T], w: &[T], bias: &[T], relu: bool) -> Vec<T> {
    let (taps, ol) = (g.taps(), g.out_positions());
    let (batch, cin, cout) = g.channels();
    let mut y = super::zeros(batch * cout * ol);
    y.par_chunks_mut(cout * ol).zip(x.par_chunks(cin * g.in_positions())).for_each_init(
        || (vec![T::zero(); taps * ol], g.scratch()),
        |(cols, phases), (yb, xb)| {
            g.im2col(xb, cols, ol, phases);
            for (row, b) in yb.chunks_exact_mut(ol).zip(bias) {
                row.fill(*b);
            }
            matmul(
                ViewMut::rows(yb, cout, ol, ol),
                true,
                View::rows(w, cout, taps),
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
    g: &impl Im2col,
    x: &[T],
    w: &[T],
    dy: &[T],
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let (ol, cout) = (g.out_positions(), g.channels().2);
    backward_with(g, x, w, need_dx, |chunk, dyw| {
        let wide = dyw.len() / cout;
        let samples = dy[chunk * CHUNK * cout * ol..].chunks_exact(cout * ol).take(wide / ol);
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
    let mut y = super::zeros(g.batch * g.cout * ol);
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
    g: &impl Im2col,
    x: &[T],
    w: &[T],
    need_dx: bool,
    fill_dy: impl Fn(usize, &mut [T]) + Sync,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let (_, cin, cout) = g.channels();
    let (taps, ol, x_step) = (g.taps(), g.out_positions(), cin * g.in_positions());
    let parts: Vec<(Vec<T>, Vec<T>)> = x
        .par_chunks(CHUNK * x_step)
        .enumerate()
        .map(|(c, xc)| {
            let wide = xc.len() / x_step * ol;
            let mut cols = vec![T::zero(); taps * wide];
            let mut dyw = vec![T::zero(); cout * wide];
            let mut phases = g.scratch();
            fill_dy(c, &mut dyw);
            for (b, xb) in xc.chunks_exact(x_step).enumerate() {
                g.im2col(xb, &mut cols[b * ol..], wide, &mut phases);
            }
            // (cout, taps + 1): the weight gradient and, in the last column, the bias gradient.
            let mut acc = vec![T::zero(); cout * (taps + 1)];
            let dy_view = View::rows(&dyw, cout, wide);
            matmul(
                ViewMut::rows(&mut acc, cout, taps, taps + 1),
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
                    View::rows(w, cout, taps).t(),
                    dy_view,
                );
                for (b, dxb) in dxc.chunks_exact_mut(x_step).enumerate() {
                    g.col2im(&cols[b * ol..], wide, dxb, &mut phases);
                }
            }
            (acc, dxc)
        })
        .collect();
    let mut total = vec![T::zero(); cout * (taps + 1)];
    let mut dx = Vec::with_capacity(if need_dx { x.len() } else { 0 });
    for (acc, dxc) in &parts {
        for (t, v) in total.iter_mut().zip(acc) {
            *t += *v;
        }
        dx.extend_from_slice(dxc);
    }
    let mut dw = Vec::with_capacity(cout * taps);
    let mut db = Vec::with_capacity(cout);
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
