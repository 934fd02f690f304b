//! The workspace's only `unsafe`: a bounds-checked call into the `gemm` crate (the matrix
//! product candle itself uses). Every view is checked against its slice before the call, so no index the
//! kernel computes can leave the slices, and the destination's elements are checked not to overlap.
#![allow(unsafe_code)]

use candle_core::DType;

use super::Real;
use super::isa::Isa;

/// A read-only strided matrix over a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// A writable strided matrix over a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug)]
pub struct ViewMut<'a, T> {
    /// The elements.
    pub data: &'a mut [T],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

impl<'a, T> ViewMut<'a, T> {
    /// A row-major `rows × cols` matrix with row stride `rs`.
    pub fn rows(data: &'a mut [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self { data, rows, cols, rs, cs: 1 }
    }
}

/// One past the largest index a `rows × cols` view with strides `rs`, `cs` touches (0 when empty).
fn reach(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
}

/// Whether distinct `(i, j)` of a view map to distinct indices.
fn no_overlap(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let (mut inner, mut outer) = ((rs, rows), (cs, cols));
    if inner.0 > outer.0 {
        std::mem::swap(&mut inner, &mut outer);
    }
    let inner_span = if inner.1 <= 1 { 1 } else { inner.0 * inner.1 };
    (inner.1 <= 1 || inner.0 >= 1) && (outer.1 <= 1 || outer.0 >= inner_span)
}

fn isize_of(v: usize) -> isize {
    isize::try_from(v).expect("a slice index fits in isize")
}

/// The instruction set the matrix products run on now ([`super::isa`]'s choice): `"avx512"`,
/// `"avx2"`, `"neon"` or `"scalar"`. Candle's own matrix products (not used by the CPU kernels) follow
/// `gemm`'s own detection.
#[must_use]
pub fn matmul_instruction_set() -> &'static str {
    super::isa::isa().name()
}

/// One `gemm_basic_generic` call with the micro-kernels of `$module` (a module of `gemm-f32`'s or
/// `gemm-f64`'s `microkernel`), `$n` lanes and the `$simd` instruction set, as `gemm` itself instantiates
/// it for that set.
macro_rules! gemm_with {
    ($simd:ty, $module:path, $t:ty, $n:expr, $args:expr) => {{
        use $module as ukr;
        let (m, n, k, dst, dst_cs, dst_rs, read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, par) = $args;
        let one: $t = 1.0;
        gemm_common::gemm::gemm_basic_generic::<
            $simd,
            $t,
            { $n },
            { ukr::MR_DIV_N * $n },
            { ukr::NR },
            { ukr::MR_DIV_N },
            { ukr::H_M },
            { ukr::H_N },
        >(
            <$simd as gemm_common::simd::MixedSimd<$t, $t, $t, $t>>::try_new()
                .expect("the instruction set was checked to be supported"),
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            one,
            one,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &ukr::UKR,
            &ukr::H_UKR,
            false,
            par,
        )
    }};
}

/// The inner dimension from which a product with a column-major right operand keeps its row-major
/// destination as it is (see `matmul_on`): measured per product shape in training on the Zen 5 (AVX-512
/// and AVX2), 64 and 128 were faster transposed, 256 level, 500 and more faster as they are.
const LONG_INNER: usize = 256;

/// `dst = lhs × rhs`, or `dst += lhs × rhs` when `accumulate`; on the calling thread.
///
/// # Panics
/// When the shapes do not chain, a view reaches past its slice, or the destination's elements overlap:
/// these are bugs in the caller, never data-dependent.
pub fn matmul<T: Real>(dst: ViewMut<'_, T>, accumulate: bool, lhs: View<'_, T>, rhs: View<'_, T>) {
    matmul_on(super::isa::isa(), false, dst, accumulate, lhs, rhs);
}

/// [`matmul`] split over the threads of the current rayon pool (`gemm` shares out blocks of the
/// destination; a product too small to pay for it stays on this thread). The same bits as [`matmul`]
/// whatever the thread count: every destination element is still the same sequence of multiply-adds
/// over the inner dimension (tested). For one large product outside a parallel loop (a weight
/// gradient summed over every row of a batch).
///
/// # Panics
/// As [`matmul`].
pub fn matmul_parallel<T: Real>(dst: ViewMut<'_, T>, accumulate: bool, lhs: View<'_, T>, rhs: View<'_, T>) {
    matmul_on(super::isa::isa(), true, dst, accumulate, lhs, rhs);
}

/// [`matmul`] (or [`matmul_parallel`] when `parallel`) on the given instruction set, which this CPU must
/// support.
///
/// # Panics
/// As [`matmul`], and when this CPU cannot run `isa`.
fn matmul_on<T: Real>(
    isa: Isa,
    parallel: bool,
    dst: ViewMut<'_, T>,
    accumulate: bool,
    lhs: View<'_, T>,
    rhs: View<'_, T>,
) {
    assert!(isa.is_supported(), "this CPU cannot run the {isa} kernels");
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(lhs.rows == m && rhs.cols == n && rhs.rows == k, "matmul shapes do not chain");
    assert!(reach(m, n, dst.rs, dst.cs) <= dst.data.len(), "matmul destination out of bounds");
    assert!(reach(m, k, lhs.rs, lhs.cs) <= lhs.data.len(), "matmul lhs out of bounds");
    assert!(reach(k, n, rhs.rs, rhs.cs) <= rhs.data.len(), "matmul rhs out of bounds");
    assert!(no_overlap(m, n, dst.rs, dst.cs), "matmul destination elements overlap");
    if m == 0 || n == 0 {
        return;
    }
    // The micro-kernels store columns of the destination as vectors: a row-major destination is
    // computed as its transpose, `dstᵀ = rhsᵀ × lhsᵀ`, as `gemm::gemm` does before it reaches the kernels
    // that are called here directly. Otherwise each element is stored on its own, which made the products
    // of the convolutions' backward passes up to 11× slower (AMD Zen 5, docs/benchmarks.md).
    // Except when `rhs` is column-major and the inner dimension long (a weight gradient, `dy × colsᵀ`):
    // then `rhsᵀ` would be a row-major left operand, which gemm repacks with a transpose for every block,
    // and that costs more than the element-wise stores, which are one per `k` multiply-adds (the EEG
    // encoder's first weight gradient, 32 × 196 × 1024: 370 → 80 µs on the Zen 5 with AVX-512).
    let transpose = dst.cs < dst.rs && !(rhs.rs == 1 && rhs.cs > 1 && k >= LONG_INNER);
    let (m, n, (dst_cs, dst_rs), lhs, rhs) = if transpose {
        (n, m, (dst.rs, dst.cs), rhs.t(), lhs.t())
    } else {
        (m, n, (dst.cs, dst.rs), lhs, rhs)
    };
    let args = (
        m,
        n,
        k,
        dst.data.as_mut_ptr(),
        isize_of(dst_cs),
        isize_of(dst_rs),
        accumulate,
        lhs.data.as_ptr(),
        isize_of(lhs.cs),
        isize_of(lhs.rs),
        rhs.data.as_ptr(),
        isize_of(rhs.cs),
        isize_of(rhs.rs),
        if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None },
    );
    // SAFETY: every index gemm forms is `i·rs + j·cs` with `i`, `j` inside the shape given for that
    // operand, and the asserts above show each such index lies inside its slice (a transposed view
    // reaches the same indices). `dst` is borrowed
    // mutably, so it aliases neither input, and its elements are distinct, so the writes do not overlap.
    // `T` is `f32` or `f64` (the sealed `Real` trait), told apart by its `DTYPE`, so the casts keep the
    // element type. `isa` is supported by this CPU (asserted above).
    // `Parallelism::None` keeps the call on this thread; `Rayon(0)` shares the destination's blocks out
    // to the current pool, each thread writing only its own blocks.
    unsafe {
        match T::DTYPE {
            DType::F32 => matmul_f32(isa, cast::<T, f32>(args)),
            DType::F64 => matmul_f64(isa, cast::<T, f64>(args)),
            other => unreachable!("Real is sealed to f32 and f64, not {other:?}"),
        }
    }
}

type Args<T> = (
    usize,
    usize,
    usize,
    *mut T,
    isize,
    isize,
    bool,
    *const T,
    isize,
    isize,
    *const T,
    isize,
    isize,
    gemm::Parallelism,
);

/// The same arguments with the pointers cast to `U`; callers check that `T` is `U`.
fn cast<T, U>(a: Args<T>) -> Args<U> {
    (a.0, a.1, a.2, a.3.cast(), a.4, a.5, a.6, a.7.cast(), a.8, a.9, a.10.cast(), a.11, a.12, a.13)
}

/// # Safety
/// As `gemm::gemm` (see [`matmul`]), and `isa` supported by this CPU ([`super::isa::force_isa`] checks it).
unsafe fn matmul_f32(isa: Isa, args: Args<f32>) {
    use gemm_f32::microkernel as uk;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { gemm_with!(gemm_common::simd::V4, uk::avx512f::f32, f32, 16, args) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gemm_with!(gemm_common::simd::V3, uk::fma::f32, f32, 8, args) },
        Isa::Scalar => unsafe { gemm_with!(gemm_common::simd::Scalar, uk::scalar::f32, f32, 1, args) },
        _ => unsafe { native(args, 1.0) },
    }
}

/// # Safety
/// As [`matmul_f32`].
unsafe fn matmul_f64(isa: Isa, args: Args<f64>) {
    use gemm_f64::microkernel as uk;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { gemm_with!(gemm_common::simd::V4, uk::avx512f::f64, f64, 8, args) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gemm_with!(gemm_common::simd::V3, uk::fma::f64, f64, 4, args) },
        Isa::Scalar => unsafe { gemm_with!(gemm_common::simd::Scalar, uk::scalar::f64, f64, 1, args) },
        _ => unsafe { native(args, 1.0) },
    }
}

/// `gemm`'s own choice (NEON on aarch64).
///
/// # Safety
/// As [`matmul`].
unsafe fn native<T: Copy + 'static>(a: Args<T>, one: T) {
    unsafe {
        gemm::gemm(
            a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, a.9, a.10, a.11, a.12, one, one, false, false,
            false, a.13,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(m: usize, n: usize, k: usize, a: &View<'_, f64>, b: &View<'_, f64>) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]).sum();
            }
        }
        out
    }

    proptest! {
        /// Every layout of the operands, with inner dimensions on both sides of [`LONG_INNER`] (where a
        /// row-major destination stops being computed as its transpose).
        #[test]
        fn matches_the_definition(
            m in 0usize..40, n in 0usize..40, k in prop_oneof![0usize..40, LONG_INNER - 16..LONG_INNER + 40],
            ta in any::<bool>(), tb in any::<bool>(), accumulate in any::<bool>(), seed in 0u64..1000,
        ) {
            let val = |i: usize| ((i as u64 * 2_654_435_761 + seed) % 1000) as f64 / 500.0 - 1.0;
            let a: Vec<f64> = (0..m * k).map(val).collect();
            let b: Vec<f64> = (0..k * n).map(|i| val(i + 7)).collect();
            let av = if ta { View::rows(&a, k, m).t() } else { View::rows(&a, m, k) };
            let bv = if tb { View::rows(&b, n, k).t() } else { View::rows(&b, k, n) };
            let expected = naive(m, n, k, &av, &bv);
            // Every instruction set this CPU runs, f64 and f32.
            for isa in Isa::supported() {
                let mut dst = vec![0.5; m * n];
                matmul_on(isa, false, ViewMut::rows(&mut dst, m, n, n), accumulate, av, bv);
                for (d, e) in dst.iter().zip(&expected) {
                    let e = if accumulate { e + 0.5 } else { *e };
                    prop_assert!((d - e).abs() < 1e-12 * (1.0 + e.abs()), "{}: {} vs {}", isa, d, e);
                }
                let (a32, b32): (Vec<f32>, Vec<f32>) =
                    (a.iter().map(|v| *v as f32).collect(), b.iter().map(|v| *v as f32).collect());
                let av32 = View { data: &a32[..], rows: av.rows, cols: av.cols, rs: av.rs, cs: av.cs };
                let bv32 = View { data: &b32[..], rows: bv.rows, cols: bv.cols, rs: bv.rs, cs: bv.cs };
                let mut dst32 = vec![0.5f32; m * n];
                matmul_on(isa, false, ViewMut::rows(&mut dst32, m, n, n), accumulate, av32, bv32);
                for (d, e) in dst32.iter().zip(&expected) {
                    let e = if accumulate { e + 0.5 } else { *e };
                    // f32 round-off grows with the number of terms and the size of the sum.
                    let tol = 1e-6 * k.max(4) as f64 * (1.0 + e.abs());
                    prop_assert!((f64::from(*d) - e).abs() < tol, "{} f32: {} vs {}", isa, d, e);
                }
            }
        }
    }

    /// The parallel product gives the serial one's bits on every instruction set, whatever the pool's
    /// thread count, on shapes large enough for `gemm` to split (a linear layer's weight gradient over a
    /// batch of sequences: a transposed left side and a long inner dimension) and on small ones.
    #[test]
    fn the_parallel_product_has_the_serial_bits_at_every_thread_count() {
        let val = |i: usize, s: usize| ((i * 2_654_435_761 + s) % 1999) as f32 / 999.0 - 1.0;
        for (m, n, k) in [(192, 64, 4000), (64, 128, 1024), (5, 7, 3), (130, 70, 1500), (16, 300, 2100)] {
            let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
            let (av, bv) = (View::rows(&a, k, m).t(), View::rows(&b, k, n));
            for isa in Isa::supported() {
                let mut serial = vec![0f32; m * n];
                matmul_on(isa, false, ViewMut::rows(&mut serial, m, n, n), false, av, bv);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut par = vec![0.25f32; m * n];
                    pool.install(|| matmul_on(isa, true, ViewMut::rows(&mut par, m, n, n), false, av, bv));
                    let same = serial.iter().zip(&par).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa}, {threads} threads, {m}×{n}×{k}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_slice_panics_before_the_call() {
        let a = [1.0f32; 5];
        let mut d = [0.0f32; 4];
        matmul(ViewMut::rows(&mut d, 2, 2, 2), false, View::rows(&a, 2, 3), View::rows(&a, 3, 2));
    }

    #[test]
    fn overlap_check() {
        assert!(no_overlap(3, 4, 4, 1));
        assert!(no_overlap(3, 4, 1, 3));
        assert!(!no_overlap(3, 4, 2, 1));
        assert!(!no_overlap(3, 4, 0, 1));
        assert!(no_overlap(1, 4, 0, 1));
    }
}
