//! The model against the PyTorch reference (parity of outputs, loss and gradients; parameter counts;
//! checkpoints) and its properties.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use core_types::FusionMode;
use experiments::{EmotionModel, Error, ModelConfig};

/// The folder of reference tensors: `EAV_REFERENCE_DIR`, or the copy of the reference set kept in
/// `tests/reference` (made by the PyTorch reference with seed 1234, batch 2).
fn reference_dir() -> PathBuf {
    std::env::var_os("EAV_REFERENCE_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference"), PathBuf::from)
}

fn config_named(name: &str, channels: usize) -> ModelConfig {
    match name {
        "eeg_only" => ModelConfig::eeg_only(channels),
        mode => ModelConfig::fused(channels, mode.parse().unwrap_or_else(|e| panic!("{e}"))),
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

#[test]
fn parameter_counts_equal_the_reference() {
    for (name, want) in [("eeg_only", 120_357), ("concat", 182_821), ("cross_attention", 168_615), ("gated", 248_613)] {
        let model = EmotionModel::new(&config_named(name, 28), &Device::Cpu, 0).unwrap();
        assert_eq!(model.num_parameters(), want, "{name}");
    }
}

/// Eval intermediates and logits within 1e-5 absolute; the train-mode loss (batch statistics, dropout off)
/// and every parameter's gradient within 1e-4 relative (to the largest magnitude of that tensor).
#[test]
fn outputs_loss_and_gradients_match_pytorch() {
    let dir = reference_dir();
    let mut io_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".io.safetensors"))
        .collect();
    io_files.sort();
    assert!(!io_files.is_empty(), "{}: no *.io.safetensors reference files", dir.display());
    for io_path in io_files {
        let file_name = io_path.file_name().unwrap().to_string_lossy().into_owned();
        let name = file_name.trim_end_matches(".io.safetensors");
        let io = candle_core::safetensors::load(&io_path, &Device::Cpu).unwrap();
        let eeg = &io["eeg"];
        let audio = io.get("audio");
        let channels = eeg.dim(1).unwrap();
        let cfg = config_named(name, channels).with_dropout(0.0);
        let model = EmotionModel::new(&cfg, &Device::Cpu, 99).unwrap();
        model.load(&dir.join(format!("{name}.weights.safetensors"))).unwrap();

        let eval = model.forward_intermediates(eeg, audio, false).unwrap();
        let mut checks = vec![("eval.eeg_latent", &eval.eeg_latent), ("eval.logits", &eval.logits)];
        if let (Some(a), Some(f)) = (&eval.audio_latent, &eval.fused) {
            checks.push(("eval.audio_latent", a));
            checks.push(("eval.fused", f));
        }
        for (key, got) in checks {
            let d = max_abs_diff(got, &io[key]);
            assert!(d <= 1e-5, "{name}: {key} differs by {d}");
        }

        let logits = model.forward(eeg, audio, true).unwrap();
        let labels = io["labels"].to_dtype(DType::U32).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let want_loss = io["train.loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let got_loss = loss.to_scalar::<f32>().unwrap();
        assert!((got_loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "{name}: loss {got_loss} vs {want_loss}");
        assert!(max_abs_diff(&logits, &io["train.logits"]) <= 1e-5, "{name}: train logits");
        let grads = loss.backward().unwrap();
        let params = model.parameters();
        let n_ref = io.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(params.len(), n_ref, "{name}: parameter count vs reference gradients");
        for (pname, var) in params {
            let want = &io[&format!("grad.{pname}")];
            let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let rel = max_abs_diff(got, want) / max_abs(want).max(1e-12);
            // A conv bias followed by train-mode BatchNorm has an exact gradient of zero (the mean is
            // removed); both sides then hold round-off of ~1e-9, which is compared as "both below 1e-7".
            let both_zero = max_abs(want) < 1e-7 && max_abs(got) < 1e-7;
            assert!(rel <= 1e-4 || both_zero, "{name}: gradient of {pname} differs by {rel} (relative)");
        }
    }
}

#[test]
fn checkpoints_round_trip_and_mismatches_are_listed() {
    let dir = std::env::temp_dir().join(format!("experiments-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = EmotionModel::new(&ModelConfig::fused(28, FusionMode::CrossAttention), &Device::Cpu, 1).unwrap();
    let path = dir.join("a.safetensors");
    a.save(&path).unwrap();
    let b = EmotionModel::new(&ModelConfig::fused(28, FusionMode::CrossAttention), &Device::Cpu, 2).unwrap();
    b.load(&path).unwrap();
    for ((na, va), (nb, vb)) in a.named_tensors().iter().zip(b.named_tensors()) {
        assert_eq!(na, &nb);
        assert_eq!(max_abs_diff(va.as_tensor(), vb.as_tensor()), 0.0, "{na}");
    }

    // A concat checkpoint into a gated model over 30 channels: everything is reported.
    let gated = EmotionModel::new(&ModelConfig::fused(30, FusionMode::Gated), &Device::Cpu, 3).unwrap();
    let before = gated.named_tensors()[0].1.as_tensor().copy().unwrap();
    let err = gated.load(&reference_dir().join("concat.weights.safetensors")).unwrap_err();
    match &err {
        Error::CheckpointMismatch { missing, unexpected, misshaped, .. } => {
            assert!(missing.iter().any(|n| n == "fusion.gate_fc.weight"), "{missing:?}");
            assert!(unexpected.iter().any(|n| n == "fusion.proj.weight"), "{unexpected:?}");
            assert!(misshaped.iter().any(|n| n.starts_with("eeg_encoder.convs.0.0.weight")), "{misshaped:?}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("concat.weights.safetensors"));
    // Nothing was changed by the failed load.
    assert_eq!(max_abs_diff(&before, gated.named_tensors()[0].1.as_tensor()), 0.0);
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    assert!(matches!(gated.load(&garbage), Err(Error::Checkpoint { .. })));
}

#[test]
fn same_seed_same_model() {
    let cfg = ModelConfig::fused(28, FusionMode::Gated);
    let a = EmotionModel::new(&cfg, &Device::Cpu, 5).unwrap();
    let b = EmotionModel::new(&cfg, &Device::Cpu, 5).unwrap();
    let c = EmotionModel::new(&cfg, &Device::Cpu, 6).unwrap();
    let (ta, tb, tc) = (a.named_tensors(), b.named_tensors(), c.named_tensors());
    let mut differs = false;
    for i in 0..ta.len() {
        assert_eq!(max_abs_diff(ta[i].1.as_tensor(), tb[i].1.as_tensor()), 0.0, "{}", ta[i].0);
        differs |= max_abs_diff(ta[i].1.as_tensor(), tc[i].1.as_tensor()) > 0.0;
    }
    assert!(differs);
}
