//! Two candle ops of the temporal mode as CPU custom ops: candle's gradient of a per-channel scale sums
//! over the batch and time axes one element at a time, with two integer divisions per element (3.3 ms
//! for a `(32, 125, 128)` sequence on the Zen 5, twice per training step), and its forward sum over the
//! time axis does the same. Each op here computes what candle's ops compute, element for element in the
//! same order, so the results are the same bits (tested against candle's ops, gradients included); on
//! other devices and dtypes the candle ops run. (The feed-forward ReLU is part of its linear op:
//! `encoders::linear_relu`.)

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType, bail};
use encoders::cpu_op::{contiguous, cpu_storage, dispatch_float as dispatch, tensor_from};
use rayon::prelude::*;

/// Rows per parallel task of the element-wise passes.
const BLOCK: usize = 256;

/// `x ⊙ scale` with `scale` `(C)` over the last axis of `x`: candle's `x.broadcast_mul(scale)`.
///
/// # Errors
/// When `scale` is not one value per channel of `x`, or from candle.
pub(crate) fn scale_channels(x: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    if encoders::cpu_op::supported(x) && x.dtype() == scale.dtype() && !GENERIC.with(std::cell::Cell::get) {
        return x.contiguous()?.apply_op2(&scale.contiguous()?, ScaleOp);
    }
    x.broadcast_mul(scale)
}

/// The mean over axis 1 of `x` `(B, T, D)`: candle's `x.mean(1)` (the sum over time, then one product).
///
/// # Errors
/// When `x` is not of rank 3, or from candle.
pub(crate) fn mean_over_time(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, t, _) = x.dims3()?;
    if encoders::cpu_op::supported(x) && !GENERIC.with(std::cell::Cell::get) {
        return x.contiguous()?.apply_op1(TimeSumOp)? * (1.0 / t as f64);
    }
    x.mean(1)
}

thread_local! {
    /// Tests: run the functions above through candle's ops even on the CPU, to compare the two paths.
    static GENERIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The channels of `x` and a matching `scale` `(C)`.
fn channels(x: &Layout, scale: &Layout) -> candle_core::Result<usize> {
    let c = x.shape().dims().last().copied().unwrap_or(0);
    if x.shape().rank() < 2 || scale.shape().dims() != [c] {
        bail!("channel scale: input {:?}, scale {:?}", x.shape(), scale.shape());
    }
    Ok(c)
}

/// `(x, scale)` → `x ⊙ scale` over the last axis. Gradients: `dx = dy ⊙ scale` (candle's product of the
/// gradient with the broadcast scale) and `dscale[c] = Σ_rows dy·x` summed in row order from zero (candle's
/// product `dy ⊙ x` and then its sum over the broadcast axes, which runs in that order).
#[derive(Debug, Clone, Copy)]
struct ScaleOp;

fn scale_rows<T: encoders::cpu_op::Real>(x: &[T], scale: &[T]) -> Vec<T> {
    let c = scale.len();
    let mut out = encoders::cpu_op::zeros::<T>(x.len());
    out.par_chunks_mut(BLOCK * c).zip(x.par_chunks(BLOCK * c)).for_each(|(o, x)| {
        for (orow, xrow) in o.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ((o, x), s) in orow.iter_mut().zip(xrow).zip(scale) {
                *o = *x * *s;
            }
        }
    });
    out
}

impl CustomOp2 for ScaleOp {
    fn name(&self) -> &'static str {
        "emofuse-channel-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        channels(l1, l2)?;
        dispatch!(s1, T => {
            let x = contiguous::<T>(s1, l1, "scaled input")?;
            let s = contiguous::<T>(s2, l2, "channel scale")?;
            Ok((T::to_cpu_storage_owned(scale_rows(x, s)), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let c = channels(x.layout(), scale.layout())?;
        let grad = grad.contiguous()?;
        if grad.dims() != x.dims() {
            bail!(
                "channel scale backward: gradient {:?} does not match the input {:?}",
                grad.shape(),
                x.shape()
            );
        }
        let (xs, xl) = x.storage_and_layout();
        let (ss, sl) = scale.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xs, ss, gs) = (cpu_storage(&xs)?, cpu_storage(&ss)?, cpu_storage(&gs)?);
        let (dx, ds) = dispatch!(xs, T => {
            let x = contiguous::<T>(xs, xl, "scaled input")?;
            let s = contiguous::<T>(ss, sl, "channel scale")?;
            let dy = contiguous::<T>(gs, gl, "channel scale output gradient")?;
            let mut ds = vec![T::from_f64(0.0); c];
            for (dyrow, xrow) in dy.chunks_exact(c).zip(x.chunks_exact(c)) {
                for ((d, g), x) in ds.iter_mut().zip(dyrow).zip(xrow) {
                    *d += *g * *x;
                }
            }
            (T::to_cpu_storage_owned(scale_rows(dy, s)), T::to_cpu_storage_owned(ds))
        });
        Ok((Some(tensor_from(dx, x.dims(), x)?), Some(tensor_from(ds, &[c], scale)?)))
    }
}

/// `x` `(B, T, D)` → `Σ_t x` `(B, D)`, each sum over `t` in order from zero (candle's sum over a middle
/// axis). Gradient: `dy` repeated over `t`.
#[derive(Debug, Clone, Copy)]
struct TimeSumOp;

impl CustomOp1 for TimeSumOp {
    fn name(&self) -> &'static str {
        "emofuse-time-sum"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, d) = l1.shape().dims3()?;
        dispatch!(s1, T => {
            let x = contiguous::<T>(s1, l1, "time-sum input")?;
            let mut out = vec![T::from_f64(0.0); b * d];
            if t > 0 {
                out.par_chunks_mut(d.max(1)).zip(x.par_chunks(t * d)).for_each(|(o, xs)| {
                    for row in xs.chunks_exact(d) {
                        o.iter_mut().zip(row).for_each(|(o, x)| *o += *x);
                    }
                });
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((b, d))))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, t, d) = x.dims3()?;
        let grad = grad.contiguous()?;
        if grad.dims() != [b, d] {
            bail!("time-sum backward: gradient {:?} for an input {:?}", grad.shape(), x.shape());
        }
        let (gs, gl) = grad.storage_and_layout();
        let gs = cpu_storage(&gs)?;
        let dx = dispatch!(gs, T => {
            let dy = contiguous::<T>(gs, gl, "time-sum output gradient")?;
            let mut dx = encoders::cpu_op::zeros::<T>(b * t * d);
            if d > 0 {
                dx.par_chunks_mut(t * d).zip(dy.par_chunks(d)).for_each(|(dxb, g)| {
                    dxb.chunks_exact_mut(d).for_each(|row| row.copy_from_slice(g));
                });
            }
            T::to_cpu_storage_owned(dx)
        });
        Ok(Some(tensor_from(dx, x.dims(), x)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use proptest::prelude::*;

    /// Values with repeats, exact zeros of both signs and a NaN-free spread, from a seed.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64)
            .map(|i| match (i * 7919 + seed * 104_729) % 23 {
                0 => 0.0,
                1 => -0.0,
                r => (r as f64 - 11.5) * 0.37 + ((i + seed) % 7) as f64 * 0.013,
            })
            .collect()
    }

    fn var(dims: &[usize], seed: u64, dtype: DType) -> Var {
        let n = dims.iter().product();
        Var::from_tensor(
            &Tensor::from_vec(values(n, seed), dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
        )
        .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        let v: Vec<f64> = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f64::to_bits).collect()
    }

    /// The output and the gradients of `Σ f(inputs)·r`, through the op (`generic` false) or candle's ops.
    fn run(generic: bool, inputs: &[&Var], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) -> Vec<Vec<u64>> {
        GENERIC.with(|g| g.set(generic));
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&xs);
        let r = var(y.dims(), seed + 1, y.dtype());
        let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        GENERIC.with(|g| g.set(false));
        let mut out = vec![bits(&y)];
        out.extend(inputs.iter().map(|v| bits(grads.get(v.as_tensor()).unwrap())));
        out
    }

    fn same_as_candle(inputs: &[&Var], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) {
        assert_eq!(run(false, inputs, f, seed), run(true, inputs, f, seed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The scale of a (transposed, like the encoders' sequences) input: the same bits as
        /// `broadcast_mul`, and the same gradients, in f32 and f64.
        #[test]
        fn channel_scale_is_candles_broadcast_product(b in 1usize..4, t in 1usize..300, c in 1usize..20, seed in 0u64..1000, f64_ in any::<bool>()) {
            let dtype = if f64_ { DType::F64 } else { DType::F32 };
            let (x, s) = (var(&[b, c, t], seed, dtype), var(&[c], seed + 7, dtype));
            same_as_candle(&[&x, &s], &|v| scale_channels(&v[0].transpose(1, 2).unwrap(), &v[1]).unwrap(), seed);
        }

        /// The mean over time: the same bits as candle's `mean(1)`, gradients included.
        #[test]
        fn mean_over_time_is_candles_mean(b in 1usize..4, t in 1usize..300, d in 1usize..20, seed in 0u64..1000, f64_ in any::<bool>()) {
            let dtype = if f64_ { DType::F64 } else { DType::F32 };
            let x = var(&[b, t, d], seed, dtype);
            same_as_candle(&[&x], &|v| mean_over_time(&v[0]).unwrap(), seed);
        }
    }

    /// A gradient that arrives transposed (not contiguous) gives the same result as its contiguous copy.
    #[test]
    fn strided_gradients_are_taken() {
        let (x, s) = (var(&[2, 3, 4], 1, DType::F32), var(&[4], 2, DType::F32));
        let strided = var(&[2, 4, 3], 3, DType::F32).as_tensor().transpose(1, 2).unwrap();
        assert!(!strided.is_contiguous());
        let y = x.as_tensor().apply_op2(s.as_tensor(), ScaleOp).unwrap();
        let (a, b) = (
            ScaleOp.bwd(x.as_tensor(), s.as_tensor(), &y, &strided).unwrap(),
            ScaleOp.bwd(x.as_tensor(), s.as_tensor(), &y, &strided.contiguous().unwrap()).unwrap(),
        );
        assert_eq!((bits(&a.0.unwrap()), bits(&a.1.unwrap())), (bits(&b.0.unwrap()), bits(&b.1.unwrap())));
        let sum = x.as_tensor().apply_op1(TimeSumOp).unwrap();
        let strided = var(&[4, 2], 4, DType::F32).as_tensor().t().unwrap();
        let (a, b) = (
            TimeSumOp.bwd(x.as_tensor(), &sum, &strided).unwrap().unwrap(),
            TimeSumOp.bwd(x.as_tensor(), &sum, &strided.contiguous().unwrap()).unwrap().unwrap(),
        );
        assert_eq!(bits(&a), bits(&b));
    }

    /// Bad shapes are errors, not panics.
    #[test]
    fn mismatched_scale_is_an_error() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(scale_channels(&x, &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).is_err());
        assert!(mean_over_time(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
