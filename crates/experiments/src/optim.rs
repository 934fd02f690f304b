//! AdamW whose state (moments and step count) can be saved and restored, so an interrupted training run
//! continues with exactly the numbers of an uninterrupted one. The update is candle-nn's `AdamW`:
//! decoupled weight decay, bias-corrected moments.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW over named variables.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<(String, Var, Tensor, Tensor)>,
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
                let z = v.as_tensor().zeros_like()?;
                Ok((n, v, z.clone(), z))
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
        let (scale_m, scale_v) = (1.0 / (1.0 - self.beta1.powi(t)), 1.0 / (1.0 - self.beta2.powi(t)));
        for (_, var, m, v) in &mut self.vars {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            *m = ((&*m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&*m * scale_m)? / ((&*v * scale_v)?.sqrt()? + self.eps)?)?;
            let next = ((var.as_tensor() * (1.0 - self.lr * self.weight_decay))? - (update * self.lr)?)?;
            var.set(&next)?;
        }
        Ok(())
    }

    /// The moments by name (`m.<name>`, `v.<name>`), for a checkpoint.
    #[must_use]
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .flat_map(|(n, _, m, v)| [(format!("m.{n}"), m.clone()), (format!("v.{n}"), v.clone())])
            .collect()
    }

    /// Restores moments saved with [`AdamW::state`] and the step count.
    ///
    /// # Errors
    /// [`crate::Error::Input`] when a moment is missing.
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (n, _, m, v) in &mut self.vars {
            let get = |k: String| {
                tensors
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| crate::Error::Input(format!("training state lacks {k}")))
            };
            *m = get(format!("m.{n}"))?;
            *v = get(format!("v.{n}"))?;
        }
        self.step = step;
        Ok(())
    }
}
