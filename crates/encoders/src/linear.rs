//! [`Linear`]: PyTorch's `nn.Linear`, `y = x·Wᵀ + b` over the last dimension.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels;

/// A fully connected layer with tensors `weight` `(outputs, inputs)` and `bias` `(outputs)`, initialised
/// like `candle_nn::linear` (and PyTorch: see [`crate::init_pytorch_default`]).
///
/// On the CPU (f32, f64) the product is one op with its own backward pass over this crate's matrix-product
/// kernel; elsewhere it is candle's matrix product. candle's CPU product looks up the thread count on every
/// call, and with `RAYON_NUM_THREADS` unset that means reading `/proc/cpuinfo` (about 50 µs): a fused
/// model's batch-1 latency halves without it.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// A layer from `inputs` to `outputs` features under `vb`.
    ///
    /// # Errors
    /// A candle error from the var builder (e.g. an existing tensor of another shape).
    pub fn new(inputs: usize, outputs: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let layer = candle_nn::linear(inputs, outputs, vb)?;
        let bias = layer
            .bias()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("linear layer without bias".into()))?;
        Ok(Self { weight: layer.weight().clone(), bias })
    }

    /// The weight `(outputs, inputs)`.
    #[must_use]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(outputs)`.
    #[must_use]
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, &self.bias)
    }
}

/// `x·Wᵀ + b` over the last dimension of `x` (rank ≥ 2; leading dimensions are kept), for a weight
/// `(outputs, inputs)` and a bias `(outputs)`.
///
/// # Errors
/// When the sizes do not match, or from candle.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if crate::cpu_op::supported(x)
        && x.rank() >= 2
        && x.dtype() == weight.dtype()
        && x.dtype() == bias.dtype()
    {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, kernels::LinearOp);
    }
    linear_generic(x, weight, bias)
}

/// The same from candle ops: runs on every device, and serves as the cross-check of the CPU op.
fn linear_generic(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&weight.t()?)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// Output and every gradient of the CPU op against candle's ops, f32 and f64, rank 2 and 3, with a
    /// weight that is a row range of a larger tensor (as attention's input projections use it).
    #[test]
    fn matches_candle_ops_forward_and_backward() -> crate::Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for shape in [vec![7, 5], vec![3, 130, 5], vec![1, 5]] {
                let x = Var::from_tensor(
                    &crate::seeded_randn(0.0, 1.0, shape.as_slice(), 1, &dev)?.to_dtype(dtype)?,
                )?;
                let big =
                    Var::from_tensor(&crate::seeded_randn(0.0, 1.0, &[9, 5], 2, &dev)?.to_dtype(dtype)?)?;
                let b = Var::from_tensor(&crate::seeded_randn(0.0, 1.0, &[4], 4, &dev)?.to_dtype(dtype)?)?;
                let w = big.narrow(0, 2, 4)?;
                let dy = crate::seeded_randn(0.0, 1.0, &[&shape[..shape.len() - 1], &[4]].concat(), 3, &dev)?
                    .to_dtype(dtype)?;
                // The inputs qualify for the CPU op, so `linear` runs it and not the candle ops.
                assert!(crate::cpu_op::supported(&x) && x.dtype() == w.dtype() && x.dtype() == b.dtype());
                let ours = linear(&x, &w, &b)?;
                let theirs = linear_generic(&x, &w, &b)?;
                assert_eq!(ours.dims(), theirs.dims());
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                let diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
                    (a - b)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()
                };
                assert!(diff(&ours, &theirs)? < tol, "{dtype:?} {shape:?} forward");
                let g_ours = (&ours * &dy)?.sum_all()?.backward()?;
                let g_theirs = (&theirs * &dy)?.sum_all()?.backward()?;
                for (name, v) in [("x", x.as_tensor()), ("weight", big.as_tensor()), ("bias", b.as_tensor())]
                {
                    let (a, e) = (g_ours.get(v).expect("gradient"), g_theirs.get(v).expect("gradient"));
                    assert!(diff(a, e)? < tol * 10.0, "{dtype:?} {shape:?} d{name}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_sizes_are_errors() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 5), DType::F32, &dev)?;
        let w = Tensor::zeros((4, 6), DType::F32, &dev)?;
        assert!(linear(&x, &w, &Tensor::zeros(4, DType::F32, &dev)?).is_err());
        let w = Tensor::zeros((4, 5), DType::F32, &dev)?;
        assert!(linear(&x, &w, &Tensor::zeros(3, DType::F32, &dev)?).is_err());
        assert_eq!(linear(&x, &w, &Tensor::zeros(4, DType::F32, &dev)?)?.dims(), [2, 4]);
        Ok(())
    }
}
