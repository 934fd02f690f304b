//! The video encoder against its PyTorch reference (`tests/reference/video_reference.py`): tensor names
//! both ways, the training-mode latent to 1e-5, the gradient of `Σ latent · r` with respect to every
//! parameter and the input to 1e-4 relative (to the largest magnitude of that tensor), the running
//! statistics after the step, and the evaluation-mode latent afterwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use encoders::{VideoEncoder, VideoEncoderConfig};

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(name)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn relative(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-12)
}

#[test]
fn video_encoder_matches_pytorch() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let enc =
        VideoEncoder::new(&VideoEncoderConfig::default(), VarBuilder::from_varmap(&varmap, DType::F32, &dev))
            .unwrap();
    let weights = candle_core::safetensors::load(reference("video.weights.safetensors"), &dev).unwrap();
    let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let theirs: BTreeSet<String> = weights.keys().cloned().collect();
    assert_eq!(ours, theirs, "tensor names differ from the reference's");
    for (k, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[k]).unwrap();
    }
    let io = candle_core::safetensors::load(reference("video.io.safetensors"), &dev).unwrap();
    let x = Var::from_tensor(&io["input"]).unwrap();
    let latent = enc.encode(x.as_tensor(), true).unwrap().into_tensor();
    let err = relative(&latent, &io["train.latent"]);
    assert!(err < 1e-5, "training-mode latent differs by {err}");
    let grads = (latent * &io["r"]).unwrap().sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap().clone();
    let mut checked = 0;
    for (name, var) in &data {
        if name.contains("running") {
            let err = relative(var.as_tensor(), &io[&format!("after.{name}")]);
            assert!(err < 1e-5, "{name} after the step differs by {err}");
            continue;
        }
        let want = &io[&format!("grad.{name}")];
        // A conv bias before batch statistics has an exact gradient of 0 (both sides hold rounding noise,
        // ≤ 2e-5 against weight gradients of order 1): compare absolutely.
        let got = grads.get(var.as_tensor()).unwrap();
        let err =
            if name.ends_with(".0.bias") { max_abs(got).max(max_abs(want)) } else { relative(got, want) };
        assert!(err < 1e-4, "gradient of {name} differs by {err}");
        checked += 1;
    }
    assert_eq!(checked, 4 * 4, "conv weight, conv bias, BatchNorm weight and bias for 4 blocks");
    let err = relative(grads.get(x.as_tensor()).unwrap(), &io["grad.input"]);
    assert!(err < 1e-4, "input gradient differs by {err}");
    let eval = enc.encode(x.as_tensor(), false).unwrap().into_tensor();
    let err = relative(&eval, &io["eval.latent"]);
    assert!(err < 1e-5, "evaluation-mode latent differs by {err}");
}
