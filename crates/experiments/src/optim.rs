//! AdamW whose state (moments and step count) can be saved and restored, so an interrupted training run
//! continues with exactly the numbers of an uninterrupted one. The update is candle-nn's `AdamW`:
//! decoupled weight decay, bias-corrected moments. On the CPU each variable is updated in place by one
//! vectorised pass over its values, variables spread over the thread pool (the same operations in the same
//! order, so the same numbers as the tensor-op path used on other devices, on every instruction set and
//! at every thread count).

use std::sync::Mutex;

use rayon::prelude::*;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var, WithDType, bail};

use crate::error::Result;

/// The moments of one variable: host vectors on the CPU, tensors elsewhere.
#[derive(Debug)]
enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
    Tensors(Tensor, Tensor),
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        let t = var.as_tensor();
        let n = t.elem_count();
        Ok(match (encoders::cpu_op::supported(t), t.dtype()) {
            (true, DType::F32) => Self::F32(vec![0.0; n], vec![0.0; n]),
            (true, DType::F64) => Self::F64(vec![0.0; n], vec![0.0; n]),
            _ => {
                let z = t.zeros_like()?;
                Self::Tensors(z.clone(), z)
            }
        })
    }

    fn tensors(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let dev = like.device();
        Ok(match self {
            Self::F32(m, v) => {
                (Tensor::from_slice(m, like.dims(), dev)?, Tensor::from_slice(v, like.dims(), dev)?)
            }
            Self::F64(m, v) => {
                (Tensor::from_slice(m, like.dims(), dev)?, Tensor::from_slice(v, like.dims(), dev)?)
            }
            Self::Tensors(m, v) => (m.clone(), v.clone()),
        })
    }

    fn set(&mut self, m: &Tensor, v: &Tensor) -> Result<()> {
        let flat = |t: &Tensor| t.flatten_all();
        *self = match self {
            Self::F32(..) => Self::F32(
                flat(m)?.to_dtype(DType::F32)?.to_vec1()?,
                flat(v)?.to_dtype(DType::F32)?.to_vec1()?,
            ),
            Self::F64(..) => Self::F64(
                flat(m)?.to_dtype(DType::F64)?.to_vec1()?,
                flat(v)?.to_dtype(DType::F64)?.to_vec1()?,
            ),
            Self::Tensors(..) => Self::Tensors(m.clone(), v.clone()),
        };
        Ok(())
    }
}

/// The constants of one step.
#[derive(Debug, Clone, Copy)]
struct StepConsts {
    beta1: f64,
    beta2: f64,
    scale_m: f64,
    scale_v: f64,
    eps: f64,
    decay: f64,
    lr: f64,
}

/// One AdamW step in place on a CPU variable, reading its gradient; the moments live in `moments`.
struct InPlaceStep<'a> {
    c: StepConsts,
    moments: Mutex<&'a mut Moments>,
}

/// The square root of `T` (the one operation of the step that `WithDType` does not give).
trait Sqrt: WithDType {
    fn sqrt(self) -> Self;
}

impl Sqrt for f32 {
    /// `f32::sqrt`: the correctly rounded root, which equals the f64 root rounded to f32 (double rounding is
    /// exact for square roots), so this path has the bits of candle's tensor-op step.
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.sqrt()
    }
}

impl Sqrt for f64 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.sqrt()
    }
}

#[inline(always)]
fn step_values<T: Sqrt>(c: StepConsts, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let k = |x: f64| T::from_f64(x);
    let (b1, ob1, b2, ob2) = (k(c.beta1), k(1.0 - c.beta1), k(c.beta2), k(1.0 - c.beta2));
    let (sm, sv, eps, decay, lr) = (k(c.scale_m), k(c.scale_v), k(c.eps), k(c.decay), k(c.lr));
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = *m * b1 + *g * ob1;
        *v = *v * b2 + (*g * *g) * ob2;
        let update = (*m * sm) / ((*v * sv).sqrt() + eps);
        *p = *p * decay - update * lr;
    }
}

/// [`step_values`] as a `pulp` operation, run by [`encoders::cpu_op::vectorize`] in the matrix products'
/// instruction set: the same element-wise operations in the same order, so the same bits on every path.
struct Step<'a, T> {
    c: StepConsts,
    p: &'a mut [T],
    g: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
}

impl<T: Sqrt> pulp::WithSimd for Step<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        step_values(self.c, self.p, self.g, self.m, self.v);
    }
}

impl InplaceOp2 for InPlaceStep<'_> {
    fn name(&self) -> &'static str {
        "emofuse-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((a, b)), Some((ga, gb))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("AdamW: variable and gradient must be contiguous");
        };
        let mut moments = self.moments.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (s1, s2, &mut **moments) {
            (CpuStorage::F32(p), CpuStorage::F32(g), Moments::F32(m, v)) => {
                encoders::cpu_op::vectorize(Step { c: self.c, p: &mut p[a..b], g: &g[ga..gb], m, v });
            }
            (CpuStorage::F64(p), CpuStorage::F64(g), Moments::F64(m, v)) => {
                encoders::cpu_op::vectorize(Step { c: self.c, p: &mut p[a..b], g: &g[ga..gb], m, v });
            }
            _ => bail!("AdamW: variable, gradient and moments have different dtypes"),
        }
        Ok(())
    }
}

/// AdamW over named variables.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<(String, Var, Moments)>,
    /// Learning rate.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
}

impl AdamW {
    /// An optimiser for `vars` with zeroed moments.
    ///
    /// # Errors
    /// candle errors while allocating the moments.
    pub fn new(
        vars: Vec<(String, Var)>,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|(n, v)| {
                let m = Moments::zeros(&v)?;
                Ok((n, v, m))
            })
            .collect::<Result<_>>()?;
        Ok(Self { vars, lr, beta1: betas.0, beta2: betas.1, eps, weight_decay, step: 0 })
    }

    /// Steps taken.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads` (variables without a gradient are left alone).
    ///
    /// # Errors
    /// candle errors.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let c = StepConsts {
            beta1: self.beta1,
            beta2: self.beta2,
            scale_m: 1.0 / (1.0 - self.beta1.powi(t)),
            scale_v: 1.0 / (1.0 - self.beta2.powi(t)),
            eps: self.eps,
            decay: 1.0 - self.lr * self.weight_decay,
            lr: self.lr,
        };
        let update = |(_, var, moments): &mut (String, Var, Moments)| -> Result<()> {
            let Some(g) = grads.get(var.as_tensor()) else { return Ok(()) };
            if let Moments::Tensors(m, v) = moments {
                *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let update = ((&*m * c.scale_m)? / ((&*v * c.scale_v)?.sqrt()? + c.eps)?)?;
                let next = ((var.as_tensor() * c.decay)? - (update * c.lr)?)?;
                var.set(&next)?;
            } else {
                let op = InPlaceStep { c, moments: Mutex::new(moments) };
                var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
            }
            Ok(())
        };
        // On the CPU the variables are independent passes over host memory: spread over the pool (the
        // same numbers whatever the thread count). Device tensors keep one thread's order of launches.
        if self.vars.iter().any(|(_, _, m)| matches!(m, Moments::Tensors(..))) {
            self.vars.iter_mut().try_for_each(update)
        } else {
            self.vars.par_iter_mut().try_for_each(update)
        }
    }

    /// The moments by name (`m.<name>`, `v.<name>`), for a checkpoint.
    ///
    /// # Errors
    /// candle errors while copying host moments into tensors.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (n, var, moments) in &self.vars {
            let (m, v) = moments.tensors(var.as_tensor())?;
            out.push((format!("m.{n}"), m));
            out.push((format!("v.{n}"), v));
        }
        Ok(out)
    }

    /// Restores moments saved with [`AdamW::state`] and the step count.
    ///
    /// # Errors
    /// [`crate::Error::Input`] when a moment is missing or has the wrong size.
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (n, var, moments) in &mut self.vars {
            let get = |k: String| {
                let t = tensors
                    .get(&k)
                    .ok_or_else(|| crate::Error::Input(format!("training state lacks {k}")))?;
                if t.elem_count() != var.elem_count() {
                    return Err(crate::Error::Input(format!("training state: {k} has the wrong size")));
                }
                Ok(t.reshape(var.dims())?)
            };
            moments.set(&get(format!("m.{n}"))?, &get(format!("v.{n}"))?)?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place CPU step gives bit for bit the numbers of the tensor-op step (used on other devices),
    /// over several steps, and its saved state restores into the same trajectory.
    #[test]
    fn in_place_step_equals_the_tensor_op_step() {
        for dtype in [DType::F32, DType::F64] {
            let init =
                encoders::seeded_randn(0.0, 1.0, &[7, 5], 1, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let (a, b) = (Var::from_tensor(&init).unwrap(), Var::from_tensor(&init.copy().unwrap()).unwrap());
            let mut fast = AdamW::new(vec![("w".into(), a.clone())], 1e-2, (0.9, 0.999), 1e-8, 0.1).unwrap();
            let mut slow = AdamW::new(vec![("w".into(), b.clone())], 1e-2, (0.9, 0.999), 1e-8, 0.1).unwrap();
            assert!(matches!(fast.vars[0].2, Moments::F32(..) | Moments::F64(..)));
            let z = init.zeros_like().unwrap();
            slow.vars[0].2 = Moments::Tensors(z.clone(), z);
            for step in 0..6 {
                let target = encoders::seeded_randn(0.0, 1.0, &[7, 5], 10 + step, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let loss = |v: &Var| (v.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
                fast.step(&loss(&a).backward().unwrap()).unwrap();
                slow.step(&loss(&b).backward().unwrap()).unwrap();
                let same =
                    a.as_tensor().eq(b.as_tensor()).unwrap().min_all().unwrap().to_scalar::<u8>().unwrap();
                assert_eq!(same, 1, "{dtype:?}: step {step} differs");
            }
            let saved: std::collections::HashMap<_, _> = fast.state().unwrap().into_iter().collect();
            let mut again = AdamW::new(vec![("w".into(), a.clone())], 1e-2, (0.9, 0.999), 1e-8, 0.1).unwrap();
            again.restore(&saved, fast.steps()).unwrap();
            let (m1, v1) = fast.vars[0].2.tensors(a.as_tensor()).unwrap();
            let (m2, v2) = again.vars[0].2.tensors(a.as_tensor()).unwrap();
            for (x, y) in [(m1, m2), (v1, v2)] {
                assert_eq!(x.eq(&y).unwrap().min_all().unwrap().to_scalar::<u8>().unwrap(), 1);
            }
        }
    }
}
