//! Seeded initialisation with PyTorch's default schemes, applied by tensor name to a whole [`VarMap`].
//!
//! candle's CPU generator cannot be seeded, so the values drawn by `VarBuilder` hints are replaced here,
//! in sorted-name order, from one ChaCha generator: the same seed gives the same model.

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// How one tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scheme {
    Const(f32),
    /// `U(−b, b)`.
    Uniform(f32),
}

fn scheme(name: &str, dims: &[usize], names: &[String]) -> Scheme {
    let sibling = |suffix: &str| {
        let prefix = name.rsplit_once('.').map_or("", |(p, _)| p);
        names.iter().any(|n| n == &format!("{prefix}.{suffix}"))
    };
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_batch_norm = sibling("running_mean");
    // Layer norms (`…norm1.weight`, `eeg_out_norm.bias`): γ 1, β 0, as PyTorch's `nn.LayerNorm`.
    let is_layer_norm = name.rsplit('.').nth(1).is_some_and(|layer| layer.contains("norm"));
    match leaf {
        "running_mean" | "blend_logits" | "in_proj_bias" => Scheme::Const(0.0),
        // `{modality}_scale` (eeg, audio, video) starts at 1, `{modality}_absent` at 0.
        "running_var" => Scheme::Const(1.0),
        _ if leaf.ends_with("_scale") => Scheme::Const(1.0),
        _ if leaf.ends_with("_absent") => Scheme::Const(0.0),
        "weight" if is_batch_norm || is_layer_norm => Scheme::Const(1.0),
        "bias" if is_batch_norm || is_layer_norm || name.ends_with("out_proj.bias") => Scheme::Const(0.0),
        // Xavier-uniform over the packed (3·E, E) projection, as torch.nn.MultiheadAttention does.
        "in_proj_weight" => Scheme::Uniform((6.0 / (dims[0] + dims[1]) as f32).sqrt()),
        // kaiming_uniform(a = √5) on weights and U(±1/√fan_in) on biases: both bound 1/√fan_in.
        "weight" => Scheme::Uniform(1.0 / (dims[1..].iter().product::<usize>() as f32).sqrt()),
        // Resolved by the caller from the fan-in of the layer's weight.
        "bias" if sibling("weight") => Scheme::Uniform(f32::NAN),
        _ => Scheme::Const(f32::NAN),
    }
}

/// Re-initialises every variable of `varmap` with PyTorch's default scheme for its layer, drawing from a
/// generator seeded with `seed`:
/// conv and linear weights and biases `U(±1/√fan_in)`; BatchNorm weight 1, bias 0, running mean 0, running
/// variance 1; attention input projections Xavier-uniform with zero biases; every `{modality}_scale` 1,
/// every `{modality}_absent` embedding and `blend_logits` 0.
///
/// # Errors
/// A candle error while writing a variable.
pub fn init_pytorch_default(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    let dims_of = |n: &str| data[n].dims().to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in &names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let s = match scheme(name, &dims, &names) {
            // A bias takes its bound from the fan-in of its layer's weight.
            Scheme::Uniform(b) if b.is_nan() => {
                let prefix = name.rsplit_once('.').map_or("", |(p, _)| p);
                let w = dims_of(&format!("{prefix}.weight"));
                Scheme::Uniform(1.0 / (w[1..].iter().product::<usize>() as f32).sqrt())
            }
            Scheme::Const(c) if c.is_nan() => continue, // unknown tensors keep their builder init
            s => s,
        };
        let n = var.elem_count();
        let values: Vec<f32> = match s {
            Scheme::Const(c) => vec![c; n],
            Scheme::Uniform(b) => (0..n).map(|_| rng.random_range(-b..=b)).collect(),
        };
        let t = Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// A tensor of `N(mean, std²)` values (f32) drawn from a ChaCha generator seeded with `seed`: the same
/// seed gives the same tensor on every machine, which candle's own `Tensor::randn` (an unseedable CPU
/// generator) cannot promise. Tests and benchmarks use it so that every run sees the same numbers.
///
/// ```
/// use candle_core::Device;
/// let a = encoders::seeded_randn(0.0, 1.0, &[2, 3], 7, &Device::Cpu)?;
/// let b = encoders::seeded_randn(0.0, 1.0, &[2, 3], 7, &Device::Cpu)?;
/// assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// A candle error while building the tensor.
pub fn seeded_randn(
    mean: f32,
    std: f32,
    shape: &[usize],
    seed: u64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> =
        (0..n).map(|_| mean + std * rng.sample::<f32, _>(rand_distr::StandardNormal)).collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    /// The draws have the asked mean and spread, the shape asked, and a seed of their own.
    #[test]
    fn seeded_randn_has_its_moments_shape_and_seed() {
        let t = super::seeded_randn(2.0, 0.5, &[40, 500], 3, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [40, 500]);
        let v: Vec<f64> =
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 20 000 draws: the mean's standard error is 0.0035, the spread's about 0.0025.
        assert!((mean - 2.0).abs() < 0.02 && (std - 0.5).abs() < 0.02, "mean {mean}, std {std}");
        let other = super::seeded_randn(2.0, 0.5, &[40, 500], 4, &Device::Cpu).unwrap();
        let same = super::seeded_randn(2.0, 0.5, &[40, 500], 3, &Device::Cpu).unwrap();
        let bits = |t: &candle_core::Tensor| -> Vec<u32> {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(bits(&t), bits(&same));
        assert_ne!(bits(&t), bits(&other));
    }
}
