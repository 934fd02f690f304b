//! `y = x·Wᵀ + b` over contiguous row-major buffers, forward and backward, with this crate's bounds-checked
//! matrix product. Rows are split into fixed blocks that run in parallel; every output element is one dot
//! product over the input dimension in the same order whatever the block, so results do not depend on
//! the thread count. The weight and bias gradients sum over all rows in row order.

use rayon::prelude::*;

use super::gemm::{View, ViewMut, matmul, matmul_parallel};
use super::{Real, zeros};

/// Rows per parallel block.
const ROWS: usize = 64;

/// The sizes of one call: `rows` inputs of `inputs` values, `outputs` values each out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearGeom {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// `x·Wᵀ + b`: `x` `(rows, inputs)`, `w` `(outputs, inputs)`, `b` `(outputs)`; returns `(rows, outputs)`.
/// The bias is added after the product, as a separate matrix product and addition would.
pub fn forward<T: Real>(g: &LinearGeom, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let (n, m) = (g.inputs, g.outputs);
    let mut y = zeros(g.rows * m);
    if m == 0 {
        return y;
    }
    y.par_chunks_mut(ROWS * m).enumerate().for_each(|(c, yb)| {
        let rows = yb.len() / m;
        let xb = &x[c * ROWS * n..][..rows * n];
        matmul(ViewMut::rows(yb, rows, m, m), false, View::rows(xb, rows, n), View::rows(w, m, n).t());
        for row in yb.chunks_exact_mut(m) {
            for (v, bias) in row.iter_mut().zip(b) {
                *v += *bias;
            }
        }
    });
    y
}

/// Gradients for the output gradient `dy` `(rows, outputs)`: `(dx if need_dx, dw, db)`.
pub fn backward<T: Real>(
    g: &LinearGeom,
    x: &[T],
    w: &[T],
    dy: &[T],
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let (n, m) = (g.inputs, g.outputs);
    let dx = need_dx.then(|| {
        let mut dx = zeros(g.rows * n);
        if n > 0 {
            dx.par_chunks_mut(ROWS * n).enumerate().for_each(|(c, dxb)| {
                let rows = dxb.len() / n;
                let dyb = &dy[c * ROWS * m..][..rows * m];
                matmul(ViewMut::rows(dxb, rows, n, n), false, View::rows(dyb, rows, m), View::rows(w, m, n));
            });
        }
        dx
    });
    let mut dw = vec![T::zero(); m * n];
    matmul_parallel(
        ViewMut::rows(&mut dw, m, n, n),
        false,
        View::rows(dy, g.rows, m).t(),
        View::rows(x, g.rows, n),
    );
    let mut db = vec![T::zero(); m];
    for row in dy.chunks_exact(m.max(1)) {
        for (d, v) in db.iter_mut().zip(row) {
            *d += *v;
        }
    }
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Forward and every gradient against the definitions, term by term (f64), on sizes that fill
        /// and do not fill a block of rows.
        #[test]
        fn matches_the_definition(rows in 0usize..150, inputs in 0usize..9, outputs in 0usize..7, seed in 0u64..100) {
            let g = LinearGeom { rows, inputs, outputs };
            let val = |i: usize, k: u64| ((i as u64 * 7919 + k * 104_729 + seed) % 211) as f64 / 105.0 - 1.0;
            let x: Vec<f64> = (0..rows * inputs).map(|i| val(i, 1)).collect();
            let w: Vec<f64> = (0..outputs * inputs).map(|i| val(i, 2)).collect();
            let b: Vec<f64> = (0..outputs).map(|i| val(i, 3)).collect();
            let dy: Vec<f64> = (0..rows * outputs).map(|i| val(i, 4)).collect();
            let y = forward(&g, &x, &w, &b);
            let (dx, dw, db) = backward(&g, &x, &w, &dy, true);
            let dx = dx.unwrap();
            for r in 0..rows {
                for o in 0..outputs {
                    let e: f64 = b[o] + (0..inputs).map(|i| x[r * inputs + i] * w[o * inputs + i]).sum::<f64>();
                    prop_assert!((y[r * outputs + o] - e).abs() < 1e-12);
                }
                for i in 0..inputs {
                    let e: f64 = (0..outputs).map(|o| dy[r * outputs + o] * w[o * inputs + i]).sum();
                    prop_assert!((dx[r * inputs + i] - e).abs() < 1e-12);
                }
            }
            for o in 0..outputs {
                let e: f64 = (0..rows).map(|r| dy[r * outputs + o]).sum();
                prop_assert!((db[o] - e).abs() < 1e-12);
                for i in 0..inputs {
                    let e: f64 = (0..rows).map(|r| dy[r * outputs + o] * x[r * inputs + i]).sum();
                    prop_assert!((dw[o * inputs + i] - e).abs() < 1e-12);
                }
            }
            prop_assert!(backward(&g, &x, &w, &dy, false).0.is_none());
        }
    }
}
