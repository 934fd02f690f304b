//! What the parity tests share: the PyTorch reference sets and their check.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use experiments::{EmotionModel, ModelConfig};

/// The default reference set: the PyTorch reference's export with seed 1234, batch 2.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// The folders of reference tensors to check: `EAV_REFERENCE_DIR` when set, else the two kept in
/// `tests/reference` (seed 1234, batch 2; and `seed999_batch3`, exported by the same program with seed 999
/// and batch 3).
pub fn reference_dirs() -> Vec<PathBuf> {
    match std::env::var_os("EAV_REFERENCE_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![reference_dir(), reference_dir().join("seed999_batch3")],
    }
}

pub fn config_named(name: &str, channels: usize) -> ModelConfig {
    match name {
        "eeg_only" => ModelConfig::eeg_only(channels),
        mode => ModelConfig::fused(channels, mode.parse().unwrap_or_else(|e| panic!("{e}"))),
    }
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Eval intermediates and logits within 1e-5 absolute; the train-mode loss (batch statistics, dropout off)
/// and every parameter's gradient within 1e-4 relative (to the largest magnitude of that tensor).
pub fn check_reference_set(dir: &Path) {
    let mut io_files: Vec<PathBuf> = std::fs::read_dir(dir)
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
        let mut checks =
            vec![("eval.eeg_latent", eval.eeg_latent.as_ref().unwrap()), ("eval.logits", &eval.logits)];
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
        assert!(
            (got_loss - want_loss).abs() <= 1e-4 * want_loss.abs(),
            "{name}: loss {got_loss} vs {want_loss}"
        );
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
