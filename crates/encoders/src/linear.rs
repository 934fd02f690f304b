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

impl Linear {
    /// `relu(self.forward(x))` as one op on the CPU ([`linear_relu`]).
    ///
    /// # Errors
    /// As [`Module::forward`].
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear_relu(x, &self.weight, &self.bias)
    }
}

/// `x·Wᵀ + b` over the last dimension of `x` (rank ≥ 2; leading dimensions are kept), for a weight
/// `(outputs, inputs)` and a bias `(outputs)`.
///
/// # Errors
/// When the sizes do not match, or from candle.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if cpu_op_fits(x, weight, bias) {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            kernels::LinearOp::default(),
        );
    }
    linear_generic(x, weight, bias)
}

/// `max(x·Wᵀ + b, 0)`: [`linear`] and candle's `relu`, with the same bits, as one op on the CPU.
///
/// # Errors
/// As [`linear`].
pub fn linear_relu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if cpu_op_fits(x, weight, bias) {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            kernels::LinearOp::with_relu(),
        );
    }
    linear_generic(x, weight, bias)?.relu()
}

/// Whether the CPU op takes these operands.
fn cpu_op_fits(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    crate::cpu_op::supported(x) && x.rank() >= 2 && x.dtype() == weight.dtype() && x.dtype() == bias.dtype()
}

/// The same from candle ops: runs on every device, and serves as the cross-check of the CPU op.
fn linear_generic(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&weight.t()?)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// The linear op with its ReLU gives the bits of the linear op followed by candle's ReLU: the output
    /// and every gradient, f32 and f64, rank 2 and 3, with pre-activations of exactly zero (a row of zero
    /// inputs, zero biases of either sign) and below it. A NaN pre-activation gives 0, as candle's.
    #[test]
    fn linear_relu_is_linear_then_candles_relu_bit_for_bit() -> crate::Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for shape in [vec![7, 5], vec![3, 130, 5]] {
                let n: usize = shape.iter().product();
                // Every fourth row zero: its pre-activations are its biases.
                let xs: Vec<f64> = (0..n)
                    .map(|i| if (i / 5) % 4 == 1 { 0.0 } else { ((i * 37) % 23) as f64 / 7.0 - 1.5 })
                    .collect();
                let x = Var::from_tensor(&Tensor::from_vec(xs, shape.as_slice(), &dev)?.to_dtype(dtype)?)?;
                let w = Var::from_tensor(&crate::seeded_randn(0.0, 1.0, &[4, 5], 2, &dev)?.to_dtype(dtype)?)?;
                let b = Var::from_tensor(&Tensor::new(&[0.0f64, -0.0, 0.3, -0.4], &dev)?.to_dtype(dtype)?)?;
                let dy = crate::seeded_randn(0.0, 1.0, &[&shape[..shape.len() - 1], &[4]].concat(), 3, &dev)?
                    .to_dtype(dtype)?;
                let run = |fused: bool| -> crate::Result<Vec<Vec<u64>>> {
                    let y = if fused {
                        linear_relu(x.as_tensor(), w.as_tensor(), b.as_tensor())?
                    } else {
                        linear(x.as_tensor(), w.as_tensor(), b.as_tensor())?.relu()?
                    };
                    let grads = (&y * &dy)?.sum_all()?.backward()?;
                    let bits = |t: &Tensor| -> crate::Result<Vec<u64>> {
                        let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                        Ok(v.into_iter().map(f64::to_bits).collect())
                    };
                    let mut out = vec![bits(&y)?];
                    for v in [&x, &w, &b] {
                        out.push(bits(grads.get(v.as_tensor()).expect("a gradient"))?);
                    }
                    Ok(out)
                };
                let (fused, apart) = (run(true)?, run(false)?);
                assert_eq!(fused, apart, "{dtype:?} {shape:?}");
                assert!(fused[0].iter().any(|b| f64::from_bits(*b) == 0.0), "some outputs are cut to zero");
            }
        }
        let x = Tensor::new(&[[f32::NAN, 1.0]], &dev)?;
        let (w, b) = (Tensor::new(&[[1.0f32, 1.0]], &dev)?, Tensor::new(&[0.0f32], &dev)?);
        assert_eq!(linear_relu(&x, &w, &b)?.to_vec2::<f32>()?, [[0.0]]);
        Ok(())
    }

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
