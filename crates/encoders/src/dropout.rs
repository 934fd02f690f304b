//! [`Dropout`] with masks drawn from the project's own seeded generator.
//!
//! candle's CPU random generator cannot be seeded, so `candle_nn::Dropout` is not reproducible.

use std::sync::Mutex;

use candle_core::{ModuleT, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Inverted dropout: in training, each element is zeroed with probability `p` and the rest scaled by
/// `1 / (1 − p)`; in evaluation it is the identity. The same seed gives the same masks.
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl Clone for Dropout {
    fn clone(&self) -> Self {
        Self { p: self.p, rng: Mutex::new(self.lock().clone()) }
    }
}

impl Dropout {
    /// Dropout with probability `p` (clamped to `[0, 1)`) and its own generator seeded with `seed`.
    #[must_use]
    pub fn new(p: f32, seed: u64) -> Self {
        Self { p: p.clamp(0.0, 0.999_999), rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    /// The drop probability.
    #[must_use]
    pub fn p(&self) -> f32 {
        self.p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        // A poisoned lock only means another thread panicked mid-draw; the generator is still valid.
        self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generator's position, to save with a checkpoint: (seed, word position).
    #[must_use]
    pub fn rng_state(&self) -> ([u8; 32], u128) {
        let rng = self.lock();
        (rng.get_seed(), rng.get_word_pos())
    }

    /// Restores a position saved with [`Dropout::rng_state`].
    pub fn set_rng_state(&self, (seed, pos): ([u8; 32], u128)) {
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_word_pos(pos);
        *self.lock() = rng;
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = {
            let mut rng = self.lock();
            (0..x.elem_count()).map(|_| if rng.random::<f32>() < self.p { 0.0 } else { scale }).collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}
