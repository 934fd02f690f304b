//! The core of multi-head attention for a few short tokens, as one candle custom op with a hand-written
//! backward pass (CPU, f32/f64): `softmax(q·kᵀ·scale)·v` per sample and head, on `(B, T, E)` tensors whose
//! columns `h·d..(h+1)·d` belong to head `h` (PyTorch's layout), so no reshape or transpose is needed
//! around it. The attention weights are kept for the backward pass and for inspection.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType, bail};
use encoders::cpu_op::{
    Real, View, ViewMut, contiguous, cpu_storage, dispatch_float as dispatch, matmul, tensor_from, zeros,
};
use rayon::prelude::*;

use crate::recycle::{self, Recycle};

/// Attention weights `(B, H, Tq, Tk)` of the last forward pass.
pub(crate) type Weights = Arc<Mutex<Option<CpuStorage>>>;

/// `ctx = softmax(q·kᵀ·scale)·v` over `(q, k, v)`; see the module docs.
#[derive(Debug)]
pub(crate) struct AttentionOp {
    heads: usize,
    weights: Weights,
    /// Per head, matrix products instead of element loops: for long sequences (the temporal mode). The
    /// element loops stay for the token attention of `cross_attention`, whose numbers are kept bit for bit.
    products: bool,
    /// Rotary codes the op applies to `q` and `k` first (the temporal mode).
    rotation: Option<Rotation>,
}

/// The rotation of the temporal mode's queries and keys (see `MultiHeadAttention::forward_timed`), applied
/// inside the op instead of by two ops of its own before it: their outputs would be two more `(B, T, E)`
/// tensors in the graph, each with a gradient candle allocates, zeroes and adds once more. Each feature
/// pair `(e, o)` of step `t` becomes `(e·c − o·s, e·s + o·c)` with the tables' cosine `c` and sine `s`,
/// and the gradient rotates back (`s` negated).
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    /// `[cos, sin]` of the queries' steps, each `(1, Tq, E/2)`.
    pub(crate) q: [Tensor; 2],
    /// The same for the keys' steps, `(1, Tk, E/2)`.
    pub(crate) k: [Tensor; 2],
}

/// The rotation tables as values: cosine and sine of the queries' and the keys' steps, `T·E/2` each.
struct Tables<T> {
    qc: Vec<T>,
    qs: Vec<T>,
    kc: Vec<T>,
    ks: Vec<T>,
}

/// A rotation table's values, checked to hold one angle per feature pair of `steps` steps.
fn table<T: WithDType>(t: &Tensor, steps: usize, e: usize) -> candle_core::Result<Vec<T>> {
    if t.dims() != [1, steps, e / 2] || !e.is_multiple_of(2) {
        bail!("attention rotation: table {:?} for {steps} steps of {e} features", t.shape());
    }
    t.flatten_all()?.to_vec1::<T>()
}

impl Rotation {
    /// The tables' values; `back`: the sines negated (the gradient's rotation back).
    fn tables<T: Real>(&self, d: &Dims, back: bool) -> candle_core::Result<Tables<T>> {
        let e = d.embed;
        let sign =
            |v: Vec<T>| if back { v.into_iter().map(|s| T::from_f64(-s.to_f64())).collect() } else { v };
        Ok(Tables {
            qc: table(&self.q[0], d.tq, e)?,
            qs: sign(table(&self.q[1], d.tq, e)?),
            kc: table(&self.k[0], d.tk, e)?,
            ks: sign(table(&self.k[1], d.tk, e)?),
        })
    }
}

/// Rotates the feature pairs of the `rows` rows of `block` (`hd` features of head `h` per row) in place
/// with the tables' `cos`, `sin` of those rows' steps (`E/2` angles per step).
fn rotate_block<T: Real>(block: &mut [T], (h, hd, e): (usize, usize, usize), cos: &[T], sin: &[T]) {
    let (half, pairs) = (e / 2, hd / 2);
    for (t, row) in block.chunks_exact_mut(hd).enumerate() {
        let (c, s) = (&cos[t * half + h * pairs..][..pairs], &sin[t * half + h * pairs..][..pairs]);
        for ((pair, c), s) in row.chunks_exact_mut(2).zip(c).zip(s) {
            let (ev, od) = (pair[0], pair[1]);
            pair[0] = ev * *c - od * *s;
            pair[1] = ev * *s + od * *c;
        }
    }
}

/// Head `h`'s columns of `x` `(rows, E)` into `out` `(rows, hd)`, rotated when `tables` are given: the
/// head's operand for the matrix products (a view of `x` itself without rotation).
fn head_operand<'a, T: Real>(
    x: &'a [T],
    rows: usize,
    (h, hd, e): (usize, usize, usize),
    tables: Option<(&[T], &[T])>,
    out: &'a mut [T],
) -> View<'a, T> {
    let Some((cos, sin)) = tables else { return head_view(x, rows, h, hd, e) };
    for (o, src) in out.chunks_exact_mut(hd).zip(x.chunks_exact(e)) {
        o.copy_from_slice(&src[h * hd..][..hd]);
    }
    rotate_block(&mut out[..rows * hd], (h, hd, e), cos, sin);
    View::rows(&out[..rows * hd], rows, hd)
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tq: usize,
    tk: usize,
    embed: usize,
    heads: usize,
}

impl Dims {
    fn head_dim(&self) -> usize {
        self.embed / self.heads
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim() as f64).sqrt()
    }
}

impl AttentionOp {
    pub(crate) fn new(heads: usize, products: bool, rotation: Option<Rotation>) -> Self {
        Self { heads, weights: Arc::default(), products, rotation }
    }

    /// The context `(B, Tq, E)` and the weights `(B, H, Tq, Tk)` of contiguous `q`, `k`, `v`.
    /// With a rotation, `q` and `k` are rotated head by head, inside each task.
    fn run<T: Real + SoftmaxRow + Recycle>(
        &self,
        d: &Dims,
        q: &[T],
        k: &[T],
        v: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let mut ctx = zeros(d.batch * d.tq * d.embed);
        let weights = d.batch * d.heads * d.tq * d.tk;
        if self.products {
            // Every `(tq, tk)` block of the weights and every head's context block is overwritten whole by
            // its matrix product: recycled buffers.
            let mut p = recycle::take(weights);
            // One task per sample and head, so that a batch of one keeps every thread busy: each head's
            // context goes to its own `(Tq, hd)` block, then into its columns of `ctx`.
            let (hd, e) = (d.head_dim(), d.embed);
            let tables = self.rotation.as_ref().map(|r| r.tables::<T>(d, false)).transpose()?;
            let mut blocks = recycle::take(d.batch * d.heads * d.tq * hd);
            let zero = T::from_f64(0.0);
            blocks
                .par_chunks_exact_mut(d.tq * hd)
                .zip(p.par_chunks_exact_mut(d.tq * d.tk))
                .enumerate()
                // Rotated heads of q and k: one pair of scratch blocks per split of the work.
                .for_each_init(
                    || (vec![zero; d.tq * hd], vec![zero; d.tk * hd]),
                    |(qs, ks), (bh, (c, ph))| {
                        let (b, h) = (bh / d.heads, bh % d.heads);
                        let kv = b * d.tk * e..(b + 1) * d.tk * e;
                        let qb = &q[b * d.tq * e..(b + 1) * d.tq * e];
                        let t = tables.as_ref();
                        let qv = head_operand(qb, d.tq, (h, hd, e), t.map(|t| (&t.qc[..], &t.qs[..])), qs);
                        let kv_ = head_operand(
                            &k[kv.clone()],
                            d.tk,
                            (h, hd, e),
                            t.map(|t| (&t.kc[..], &t.ks[..])),
                            ks,
                        );
                        forward_head_products(d, qv, kv_, head_view(&v[kv], d.tk, h, hd, e), c, ph);
                    },
                );
            scatter_heads(d, d.tq, &blocks, &mut ctx);
            recycle::give(blocks);
            return Ok((ctx, p));
        }
        let mut p = zeros(weights);
        // Samples are independent: one per task, the same arithmetic whatever the thread count.
        ctx.par_chunks_exact_mut(d.tq * d.embed)
            .zip(p.par_chunks_exact_mut(d.heads * d.tq * d.tk))
            .enumerate()
            .for_each(|(b, (c, pb))| {
                let kv = b * d.tk * d.embed..(b + 1) * d.tk * d.embed;
                let qb = &q[b * d.tq * d.embed..(b + 1) * d.tq * d.embed];
                forward_sample(d, qb, &k[kv.clone()], &v[kv], c, pb);
            });
        Ok((ctx, p))
    }

    /// A handle to the weights the forward pass will compute.
    pub(crate) fn weights_handle(&self) -> Weights {
        Arc::clone(&self.weights)
    }

    fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Dims> {
        let (batch, tq, embed) = q.shape().dims3()?;
        let (kb, tk, ke) = k.shape().dims3()?;
        if (kb, ke) != (batch, embed) || v.shape() != k.shape() || embed % self.heads != 0 || tk == 0 {
            bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit {} heads",
                q.shape(),
                k.shape(),
                v.shape(),
                self.heads
            );
        }
        Ok(Dims { batch, tq, tk, embed, heads: self.heads })
    }
}

/// Forward for one sample: returns ctx `(tq, E)` into `ctx` and weights `(H, tq, tk)` into `p`.
fn forward_sample<T: WithDType>(d: &Dims, q: &[T], k: &[T], v: &[T], ctx: &mut [T], p: &mut [T]) {
    let (hd, e, scale) = (d.head_dim(), d.embed, T::from_f64(d.scale()));
    for h in 0..d.heads {
        let cols = h * hd..(h + 1) * hd;
        for i in 0..d.tq {
            let row = &mut p[(h * d.tq + i) * d.tk..][..d.tk];
            let qi = &q[i * e + cols.start..i * e + cols.end];
            let mut max = f64::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate() {
                let kj = &k[j * e + cols.start..j * e + cols.end];
                *s = qi.iter().zip(kj).fold(T::zero(), |a, (x, y)| a + *x * *y) * scale;
                max = max.max(s.to_f64());
            }
            let mut sum = 0.0;
            for s in row.iter_mut() {
                let x = (s.to_f64() - max).exp();
                *s = T::from_f64(x);
                sum += x;
            }
            let out = &mut ctx[i * e + cols.start..i * e + cols.end];
            out.fill(T::zero());
            for (j, s) in row.iter_mut().enumerate() {
                *s = T::from_f64(s.to_f64() / sum);
                for (o, x) in out.iter_mut().zip(&v[j * e + cols.start..j * e + cols.end]) {
                    *o += *s * *x;
                }
            }
        }
    }
}

/// Head `h`'s columns of a `(rows, e)` row-major matrix.
fn head_view<T>(data: &[T], rows: usize, h: usize, hd: usize, e: usize) -> View<'_, T> {
    View { data: &data[h * hd..], rows, cols: hd, rs: e, cs: 1 }
}

/// Copies per-head blocks `(B, H, rows, hd)` into the columns of `(B, rows, E)`.
fn scatter_heads<T: Copy + Send + Sync>(d: &Dims, rows: usize, blocks: &[T], out: &mut [T]) {
    let hd = d.head_dim();
    out.par_chunks_exact_mut(rows * d.embed).zip(blocks.par_chunks_exact(d.heads * rows * hd)).for_each(
        |(o, bl)| {
            for (h, head) in bl.chunks_exact(rows * hd).enumerate() {
                for (i, src) in head.chunks_exact(hd).enumerate() {
                    o[i * d.embed + h * hd..][..hd].copy_from_slice(src);
                }
            }
        },
    );
}

/// One head of [`forward_sample`] with matrix products for `q·kᵀ` and `P·v` (the same result up to
/// rounding), from the head's `q` `(tq, hd)`, `k` and `v` `(tk, hd)`: its context `(tq, hd)` into `ctx`,
/// its weights `(tq, tk)` into `p`.
fn forward_head_products<T: Real + SoftmaxRow>(
    d: &Dims,
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    ctx: &mut [T],
    p: &mut [T],
) {
    let hd = d.head_dim();
    matmul(ViewMut::rows(p, d.tq, d.tk, d.tk), false, q, k.t());
    T::softmax_rows(p, d.tk, d.scale());
    matmul(ViewMut::rows(ctx, d.tq, hd, hd), false, View::rows(p, d.tq, d.tk), v);
}

/// `row ← softmax(row · scale)` for each row of `len` values, in place: the long-sequence attention's one
/// transcendental step.
pub(crate) trait SoftmaxRow: Sized {
    /// See the trait.
    fn softmax_rows(rows: &mut [Self], len: usize, scale: f64);
}

impl SoftmaxRow for f64 {
    fn softmax_rows(rows: &mut [f64], len: usize, scale: f64) {
        for row in rows.chunks_exact_mut(len) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, s| m.max(s * scale));
            let mut sum = 0.0;
            for s in row.iter_mut() {
                *s = (*s * scale - max).exp();
                sum += *s;
            }
            for s in row.iter_mut() {
                *s /= sum;
            }
        }
    }
}

/// Lanes of the f32 row reductions: independent partial maxima and sums, so that the compiler keeps them in
/// vector registers; the order of the additions is fixed, so the result is the same on every CPU.
const LANES: usize = 8;

impl SoftmaxRow for f32 {
    /// In f32 throughout, with [`exp_f32`] instead of a call to the C library's scalar `exp` per score:
    /// within 1e-6 relative of the f64 softmax. A NaN score makes its whole row NaN, as in f64. The rows
    /// run in the instruction set of the matrix products ([`encoders::isa`]: x86-64-v4 for AVX-512,
    /// x86-64-v3 for AVX2, baseline for scalar; through `pulp`), compiled from the same scalar code
    /// without fused multiply-adds, so every path gives the same bits (tested).
    fn softmax_rows(rows: &mut [f32], len: usize, scale: f64) {
        encoders::cpu_op::vectorize(SoftmaxF32 { rows, len, scale: scale as f32 });
    }
}

/// The instruction set of the f32 softmax now: `"x86-64-v4"` (AVX-512), `"x86-64-v3"` (AVX2, FMA),
/// `"baseline"`, or `pulp`'s own choice elsewhere (`"native"`); it follows [`encoders::isa`].
#[must_use]
pub fn softmax_instruction_set() -> &'static str {
    match encoders::isa() {
        encoders::Isa::Avx512 => "x86-64-v4",
        encoders::Isa::Avx2 => "x86-64-v3",
        encoders::Isa::Scalar => "baseline",
        encoders::Isa::Neon => "native",
    }
}

/// [`SoftmaxRow`] for f32 as a `pulp` operation.
struct SoftmaxF32<'a> {
    rows: &'a mut [f32],
    len: usize,
    scale: f32,
}

impl pulp::WithSimd for SoftmaxF32<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let mut groups = self.rows.chunks_exact_mut(GROUP * self.len);
        for group in &mut groups {
            softmax_group::<GROUP>(group, self.len, self.scale);
        }
        for row in groups.into_remainder().chunks_exact_mut(self.len) {
            softmax_group::<1>(row, self.len, self.scale);
        }
    }
}

/// Rows whose reductions [`softmax_group`] interleaves.
const GROUP: usize = 4;

/// The softmax of `G` rows of `len` values at once, each row's operations the same and in the same
/// order whatever `G` (so the same bits), with the rows' maxima and sums interleaved: each row's
/// reductions are chains of dependent operations (about 30 for a row of 125), which the CPU overlaps
/// across rows.
#[inline(always)]
fn softmax_group<const G: usize>(group: &mut [f32], len: usize, scale: f32) {
    for s in group.iter_mut() {
        *s *= scale;
    }
    let whole = len / LANES * LANES;
    let mut lanes = [[f32::NEG_INFINITY; LANES]; G];
    for c in (0..whole).step_by(LANES) {
        for (r, lanes) in lanes.iter_mut().enumerate() {
            for (m, s) in lanes.iter_mut().zip(&group[r * len + c..][..LANES]) {
                *m = if *s > *m { *s } else { *m };
            }
        }
    }
    let mut max = [f32::NEG_INFINITY; G];
    for i in whole..len {
        for (r, m) in max.iter_mut().enumerate() {
            *m = m.max(group[r * len + i]);
        }
    }
    for t in 0..LANES {
        for (m, lanes) in max.iter_mut().zip(&lanes) {
            *m = m.max(lanes[t]);
        }
    }
    for (row, max) in group.chunks_exact_mut(len).zip(max) {
        for s in row.iter_mut() {
            *s = exp_f32(*s - max);
        }
    }
    let mut sums = [[0f32; LANES]; G];
    for c in (0..whole).step_by(LANES) {
        for (r, sums) in sums.iter_mut().enumerate() {
            for (t, s) in sums.iter_mut().zip(&group[r * len + c..][..LANES]) {
                *t += *s;
            }
        }
    }
    let mut totals = [0f32; G];
    for (r, total) in totals.iter_mut().enumerate() {
        *total = sums[r].iter().sum::<f32>() + group[r * len + whole..][..len - whole].iter().sum::<f32>();
    }
    for (row, total) in group.chunks_exact_mut(len).zip(totals) {
        let inv = 1.0 / total;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
}

/// `eˣ` in f32 for the softmax's `x ≤ 0` (correct on `[-87, 88]`, 0 below), within 2 ulp: `2ⁿ·eʳ` with
/// `n = round(x / ln 2)`, `r` reduced in two steps (Cody–Waite) and `eʳ` a degree-7 polynomial (Cephes'
/// `expf` coefficients). Branch-free, so that loops over it vectorise; a NaN input gives NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOW: f32 = -87.0;
    const HIGH: f32 = 88.0;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even) for |v| < 2²²,
    // without the `roundf` call that baseline x86-64 would need.
    const ROUND: f32 = 12_582_912.0;
    // `clamp` keeps a NaN.
    let xc = x.clamp(LOW, HIGH);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * 0.693_359_375 - n * -2.121_944_4e-4;
    let p = 1.987_569_15e-4_f32;
    let p = p * r + 1.398_199_95e-3;
    let p = p * r + 8.333_451_9e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_55e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // `shifted`'s low mantissa bits hold `n` (|n| ≤ 127): 2ⁿ from integer operations only (a float-to-int
    // `as` cast saturates, which the compiler does not vectorise).
    let two_n = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < LOW { 0.0 } else { y * two_n }
}

/// One head of [`backward_sample`] with matrix products, from the head's `q` `(tq, hd)`, `k`, `v`
/// `(tk, hd)`, weights `p` `(tq, tk)` and output gradient `dctx` `(tq, hd)`: its gradients `(tq, hd)`,
/// `(tk, hd)`, `(tk, hd)` of q, k and v into `dq`, `dk`, `dv` (overwritten); `ds` `(tq, tk)` is scratch.
#[allow(clippy::too_many_arguments)]
fn backward_head_products<T: Real>(
    d: &Dims,
    ds: &mut [T],
    (q, k, v): (View<'_, T>, View<'_, T>, View<'_, T>),
    p: &[T],
    go: View<'_, T>,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let (hd, scale) = (d.head_dim(), T::from_f64(d.scale()));
    // dP = dctx·vᵀ (overwrites `ds`); dv = Pᵀ·dctx
    matmul(ViewMut::rows(ds, d.tq, d.tk, d.tk), false, go, v.t());
    matmul(ViewMut::rows(dv, d.tk, hd, hd), false, View::rows(p, d.tq, d.tk).t(), go);
    // dS = P·(dP − Σ P·dP), times the scale for q and k.
    for (prow, srow) in p.chunks_exact(d.tk).zip(ds.chunks_exact_mut(d.tk)) {
        let dot = prow.iter().zip(srow.iter()).fold(T::zero(), |a, (x, y)| a + *x * *y);
        for (s, pj) in srow.iter_mut().zip(prow) {
            *s = *pj * (*s - dot) * scale;
        }
    }
    // dq = dS·k; dk = dSᵀ·q
    matmul(ViewMut::rows(dq, d.tq, hd, hd), false, View::rows(ds, d.tq, d.tk), k);
    matmul(ViewMut::rows(dk, d.tk, hd, hd), false, View::rows(ds, d.tq, d.tk).t(), q);
}

/// Backward for one sample: gradients of q, k, v from `dctx` and the forward's weights `p`.
#[allow(clippy::too_many_arguments)]
fn backward_sample<T: WithDType>(
    d: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    p: &[T],
    dctx: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let (hd, e, scale) = (d.head_dim(), d.embed, T::from_f64(d.scale()));
    let mut ds = vec![T::zero(); d.tk];
    for h in 0..d.heads {
        let cols = h * hd..(h + 1) * hd;
        for i in 0..d.tq {
            let row = &p[(h * d.tq + i) * d.tk..][..d.tk];
            let go = &dctx[i * e + cols.start..i * e + cols.end];
            // dP[j] = dctx_i · v_j;  dv_j += P[j]·dctx_i
            let mut dot = T::zero();
            for (j, (s, pj)) in ds.iter_mut().zip(row).enumerate() {
                let vj = &v[j * e + cols.start..j * e + cols.end];
                *s = go.iter().zip(vj).fold(T::zero(), |a, (x, y)| a + *x * *y);
                dot += *s * *pj;
                for (g, x) in dv[j * e + cols.start..j * e + cols.end].iter_mut().zip(go) {
                    *g += *pj * *x;
                }
            }
            // dS[j] = P[j]·(dP[j] − Σ P·dP), times the scale for q and k.
            for (s, pj) in ds.iter_mut().zip(row) {
                *s = *pj * (*s - dot) * scale;
            }
            let qi = &q[i * e + cols.start..i * e + cols.end];
            for (j, s) in ds.iter().enumerate() {
                let kj = &k[j * e + cols.start..j * e + cols.end];
                for (g, x) in dq[i * e + cols.start..i * e + cols.end].iter_mut().zip(kj) {
                    *g += *s * *x;
                }
                for (g, x) in dk[j * e + cols.start..j * e + cols.end].iter_mut().zip(qi) {
                    *g += *s * *x;
                }
            }
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "emofuse-attention"
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
        let d = self.dims(l1, l2, l3)?;
        dispatch!(s1, T => {
            let (q, k, v) = (contiguous::<T>(s1, l1, "attention query")?, contiguous::<T>(s2, l2, "attention key")?, contiguous::<T>(s3, l3, "attention value")?);
            let (ctx, p) = self.run(&d, q, k, v)?;
            *self.weights.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(T::to_cpu_storage_owned(p));
            Ok((T::to_cpu_storage_owned(ctx), Shape::from((d.batch, d.tq, d.embed))))
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let mut guard = self.weights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let d = self.dims(ql, kl, vl)?;
        if gl.shape() != ql.shape() {
            bail!("attention backward: gradient {:?} does not match the output", gl.shape());
        }
        let (qs, ks, vs, gs) = (cpu_storage(&qs)?, cpu_storage(&ks)?, cpu_storage(&vs)?, cpu_storage(&gs)?);
        let (dq, dk, dv) = dispatch!(qs, T => {
            let (q, k, v, g) = (contiguous::<T>(qs, ql, "attention query")?, contiguous::<T>(ks, kl, "attention key")?, contiguous::<T>(vs, vl, "attention value")?, contiguous::<T>(gs, gl, "attention output gradient")?);
            let mut again = None;
            let p = match guard.as_ref() {
                Some(p) => T::cpu_storage_as_slice(p)?,
                None => again.insert(self.run(&d, q, k, v)?.1).as_slice(),
            };
            let (qn, kn, pn) = (d.tq * d.embed, d.tk * d.embed, d.heads * d.tq * d.tk);
            let (mut dq, mut dk, mut dv) = (zeros::<T>(q.len()), zeros::<T>(k.len()), zeros::<T>(v.len()));
            if self.products {
                // One task per sample and head (see `run`), each into its own blocks; with a rotation, the
                // task rotates its heads of q and k as the forward pass did, and its gradients of them back.
                let (hd, e) = (d.head_dim(), d.embed);
                let (qh, kh) = (d.tq * hd, d.tk * hd);
                let forward = self.rotation.as_ref().map(|r| r.tables::<T>(&d, false)).transpose()?;
                let back = self.rotation.as_ref().map(|r| r.tables::<T>(&d, true)).transpose()?;
                // Overwritten whole, block by block, by the matrix products: recycled buffers.
                let (mut bq, mut bk, mut bv) = (recycle::take::<T>(q.len()), recycle::take::<T>(k.len()), recycle::take::<T>(v.len()));
                let zero = T::from_f64(0.0);
                bq.par_chunks_exact_mut(qh)
                    .zip(bk.par_chunks_exact_mut(kh))
                    .zip(bv.par_chunks_exact_mut(kh))
                    .enumerate()
                    // Scratch per split of the work, not per task: the `(tq, tk)` gradient of the scores and
                    // the rotated heads, each overwritten by every task.
                    .for_each_init(
                        || (vec![zero; d.tq * d.tk], vec![zero; qh], vec![zero; kh]),
                        |(ds, qs, ks), (bh, ((dq, dk), dv))| {
                            let (b, h) = (bh / d.heads, bh % d.heads);
                            let t = forward.as_ref();
                            let qv = head_operand(&q[b * qn..][..qn], d.tq, (h, hd, e), t.map(|t| (&t.qc[..], &t.qs[..])), qs);
                            let kv = head_operand(&k[b * kn..][..kn], d.tk, (h, hd, e), t.map(|t| (&t.kc[..], &t.ks[..])), ks);
                            let vv = head_view(&v[b * kn..][..kn], d.tk, h, hd, e);
                            let go = head_view(&g[b * qn..][..qn], d.tq, h, hd, e);
                            let ph = &p[b * pn + h * d.tq * d.tk..][..d.tq * d.tk];
                            backward_head_products::<T>(&d, ds, (qv, kv, vv), ph, go, dq, dk, dv);
                            if let Some(t) = &back {
                                rotate_block(dq, (h, hd, e), &t.qc, &t.qs);
                                rotate_block(dk, (h, hd, e), &t.kc, &t.ks);
                            }
                        },
                    );
                scatter_heads(&d, d.tq, &bq, &mut dq);
                scatter_heads(&d, d.tk, &bk, &mut dk);
                scatter_heads(&d, d.tk, &bv, &mut dv);
                for b in [bq, bk, bv] {
                    recycle::give(b);
                }
            } else {
                dq.par_chunks_exact_mut(qn)
                    .zip(dk.par_chunks_exact_mut(kn))
                    .zip(dv.par_chunks_exact_mut(kn))
                    .enumerate()
                    .for_each(|(b, ((dq, dk), dv))| {
                        backward_sample::<T>(
                            &d,
                            &q[b * qn..][..qn],
                            &k[b * kn..][..kn],
                            &v[b * kn..][..kn],
                            &p[b * pn..][..pn],
                            &g[b * qn..][..qn],
                            dq,
                            dk,
                            dv,
                        );
                    });
            }
            if let (true, Some(p)) = (self.products, again) {
                recycle::give(p);
            }
            (T::to_cpu_storage_owned(dq), T::to_cpu_storage_owned(dk), T::to_cpu_storage_owned(dv))
        });
        // The weights have served their backward pass (a second one would compute them again).
        if let (true, Some(p)) = (self.products, guard.take()) {
            give_storage(p);
        }
        Ok((
            Some(tensor_from(dq, q.dims(), q)?),
            Some(tensor_from(dk, k.dims(), k)?),
            Some(tensor_from(dv, v.dims(), v)?),
        ))
    }
}

/// Hands the weights of a long-sequence attention back to [`recycle`].
fn give_storage(s: CpuStorage) {
    match s {
        CpuStorage::F32(v) => recycle::give(v),
        CpuStorage::F64(v) => recycle::give(v),
        _ => {}
    }
}

/// The op's output and its attention weights `(B, H, Tq, Tk)` (not differentiable: for inspection).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (ctx, w) = attend_with(q, k, v, heads, (false, None), true, true)?;
    let Some(w) = w else { bail!("attention forward left no weights") };
    Ok((ctx, w))
}

/// [`attend`] with matrix products per head (long sequences); the weights are copied out only when
/// `keep` is set (at batch 256 and 125 steps they are 64 MB), and held for the backward pass only when
/// `train` is set (without it a backward pass computes them again). With `rotation`, `q` and `k` are
/// rotated inside the op first.
pub(crate) fn attend_long(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    keep: bool,
    train: bool,
    rotation: Option<Rotation>,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    attend_with(q, k, v, heads, (true, rotation), keep, train)
}

fn attend_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    (products, rotation): (bool, Option<Rotation>),
    keep: bool,
    store: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let op = AttentionOp::new(heads, products, rotation);
    let weights = op.weights_handle();
    let (b, tq, _) = q.dims3()?;
    let tk = k.dim(1)?;
    let ctx = q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?;
    // Without `store` the op lets go of its weights: the graph then holds no `(B, H, Tq, Tk)` buffer per
    // attention, and a backward pass, if one is asked for after all, computes them again from `q` and
    // `k` (the same arithmetic, so the same bits).
    let w = {
        let mut held = weights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (keep, store) {
            (false, true) => None,
            (true, true) => held.clone(),
            (_, false) => held.take(),
        }
    };
    if !keep {
        if let (true, Some(w)) = (products, w) {
            give_storage(w);
        }
        return Ok((ctx, None));
    }
    let Some(w) = w else { bail!("attention forward left no weights") };
    Ok((ctx, Some(tensor_from(w, &[b, heads, tq, tk], q)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_on_the_softmax_range_and_zero_below_it() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
        }
        for x in [1e-3f32, 0.5, 1.0, 10.0, 80.0] {
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0 * f64::from(f32::EPSILON), "relative error {worst:e}");
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn the_f32_softmax_row_matches_the_f64_one() {
        for len in [1usize, 3, 8, 9, 31, 157] {
            let row64: Vec<f64> = (0..len).map(|j| (j as f64 * 0.37).sin() * 30.0).collect();
            let mut row32: Vec<f32> = row64.iter().map(|&x| x as f32).collect();
            let mut want = row64.clone();
            f64::softmax_rows(&mut want, len, 0.25);
            f32::softmax_rows(&mut row32, len, 0.25);
            for (g, w) in row32.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-6 * w.max(1e-30), "{len}: {g} vs {w}");
            }
            assert!((row32.iter().map(|&x| f64::from(x)).sum::<f64>() - 1.0).abs() < 1e-6);
        }
        let mut nan = vec![0.0f32, f32::NAN, 1.0];
        f32::softmax_rows(&mut nan, 3, 1.0);
        assert!(nan.iter().all(|x| x.is_nan()));
    }

    /// Rows taken four at a time give the bits of one row at a time, whatever the row length (whole
    /// lanes, a remainder, rows shorter than the lanes) and the row count; a NaN row stays NaN and
    /// leaves the other rows of its group alone.
    #[test]
    fn grouped_rows_are_single_rows_bit_for_bit() {
        for len in [1usize, 3, 8, 9, 15, 16, 17, 31, 64, 65, 125, 157] {
            for rows in [1usize, 3, 4, 5, 8, 11] {
                let mut base: Vec<f32> = (0..len * rows).map(|j| ((j as f32) * 0.913).sin() * 40.0).collect();
                if rows > 2 {
                    base[len + len / 2] = f32::NAN;
                }
                let mut grouped = base.clone();
                f32::softmax_rows(&mut grouped, len, 0.3);
                let mut single = base;
                for row in single.chunks_exact_mut(len) {
                    encoders::cpu_op::vectorize(SoftmaxF32 { rows: row, len, scale: 0.3 });
                }
                for (r, (g, s)) in grouped.chunks_exact(len).zip(single.chunks_exact(len)).enumerate() {
                    assert!(
                        g.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "len {len}, {rows} rows: row {r}"
                    );
                    assert_eq!(
                        g.iter().all(|x| x.is_nan()),
                        rows > 2 && r == 1,
                        "len {len}, {rows} rows: row {r}"
                    );
                }
            }
        }
    }

    /// In evaluation the op lets go of its weights; a backward pass then computes them again and gives
    /// the training pass's gradients bit for bit, and the inspected weights are the same.
    #[test]
    fn evaluation_holds_no_weights_and_its_backward_pass_recomputes_them() {
        use candle_core::{Device, Var};
        let (b, tq, tk, e, heads) = (3, 7, 11, 8, 2);
        let values =
            |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect() };
        let var = |dims: &[usize], seed| {
            Var::from_vec(values(dims.iter().product(), seed), dims, &Device::Cpu).unwrap()
        };
        let (q, k, v) = (var(&[b, tq, e], 1.0), var(&[b, tk, e], 2.0), var(&[b, tk, e], 3.0));
        let r = Tensor::from_vec(values(b * tq * e, 4.0), (b, tq, e), &Device::Cpu).unwrap();
        let run = |train: bool| {
            let (ctx, w) =
                attend_long(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, true, train, None).unwrap();
            let grads = (&ctx * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| -> Vec<u32> {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
            };
            let g: Vec<Vec<u32>> =
                [&q, &k, &v].iter().map(|x| flat(grads.get(x.as_tensor()).unwrap())).collect();
            (flat(&ctx), flat(&w.unwrap()), g)
        };
        assert_eq!(run(true), run(false));
        let (_, none) =
            attend_long(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, false, false, None).unwrap();
        assert!(none.is_none());
    }

    /// Every instruction set this CPU has gives the bits of baseline x86-64.
    #[test]
    fn every_instruction_set_gives_the_same_softmax() {
        let (len, n) = (157, 12);
        let base: Vec<f32> = (0..len * n).map(|j| ((j as f32) * 0.731).sin() * 25.0).collect();
        let mut scalar = base.clone();
        pulp::Simd::vectorize(pulp::Scalar::new(), SoftmaxF32 { rows: &mut scalar, len, scale: 0.17 });
        let mut best = base.clone();
        f32::softmax_rows(&mut best, len, 0.17);
        assert!(best.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()));
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v4) = pulp::x86::V4::try_new() {
                let mut wide = base.clone();
                pulp::Simd::vectorize(v4, SoftmaxF32 { rows: &mut wide, len, scale: 0.17 });
                assert!(wide.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            if let Some(v3) = pulp::x86::V3::try_new() {
                let mut wide = base;
                pulp::Simd::vectorize(v3, SoftmaxF32 { rows: &mut wide, len, scale: 0.17 });
                assert!(wide.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
        eprintln!("instruction set: {}", softmax_instruction_set());
    }
}
