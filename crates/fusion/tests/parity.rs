//! The fusion layer against its PyTorch reference (`tests/reference/fusion_reference.py`): every mode over
//! two or three modalities with absent modalities per sample. The reference's tensor names are the
//! layer's, both ways; the fused output matches to 1e-5 and the gradient of `Σ fused · r` with respect to
//! every tensor and every input to 1e-4 relative (to the largest magnitude of that tensor).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use core_types::{Latent, Modality, Sequence};
use fusion::{Fusion, FusionConfig, ModalityInput};

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// `|a − b|` at its largest over the largest magnitude of `b`.
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-12)
}

#[test]
fn every_mode_with_absent_modalities_matches_pytorch() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(reference_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "reference cases: {cases:?}");
    let mut modes = BTreeSet::new();
    let mut three = BTreeSet::new();
    for case in cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&case).unwrap()).unwrap();
        let cfg: FusionConfig = serde_json::from_value(meta["config"].clone()).unwrap();
        modes.insert(cfg.mode);
        if cfg.modalities.len() == 3 {
            three.insert(cfg.mode);
        }
        let varmap = VarMap::new();
        let fusion = Fusion::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        let weights = candle_core::safetensors::load(
            reference_dir().join(format!("{name}.weights.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        // Strict names, both ways: a checkpoint of this layer loads into the reference and back.
        let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        let theirs: BTreeSet<String> = weights.keys().cloned().collect();
        assert_eq!(ours, theirs, "{name}: tensor names differ from the reference's");
        for (k, var) in varmap.data().lock().unwrap().iter() {
            var.set(&weights[k]).unwrap();
        }

        let io = candle_core::safetensors::load(
            reference_dir().join(format!("{name}.io.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let mut leaves: Vec<(String, Var)> = Vec::new();
        let inputs: Vec<ModalityInput> = cfg
            .modalities
            .iter()
            .map(|m: &Modality| {
                let latent = Var::from_tensor(&io[&format!("latent.{m}")]).unwrap();
                let seq = Var::from_tensor(&io[&format!("sequence.{m}")]).unwrap();
                let times: Vec<f64> =
                    io[&format!("times.{m}")].to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
                leaves.push((format!("latent.{m}"), latent.clone()));
                leaves.push((format!("sequence.{m}"), seq.clone()));
                let mut input =
                    ModalityInput::new(*m, Latent::new(latent.as_tensor().clone(), cfg.latent_dim).unwrap())
                        .with_sequence(
                            Sequence::new(seq.as_tensor().clone(), cfg.latent_dim, times).unwrap(),
                        );
                if let Some(p) = io.get(&format!("present.{m}")) {
                    input = input.with_presence(p.clone());
                }
                input
            })
            .collect();
        let out = fusion.fuse_set(&inputs, false).unwrap();
        let d = max_abs(&(&out.fused - &io["fused"]).unwrap());
        assert!(d <= 1e-5, "{name}: fused output differs by {d}");
        if let Some(want) = io.get("router") {
            let d = max_abs(&(out.router.as_ref().unwrap() - want).unwrap());
            assert!(d <= 1e-5, "{name}: router weights differ by {d}");
        }
        let grads = (out.fused * &io["r"]).unwrap().sum_all().unwrap().backward().unwrap();
        let params: Vec<(String, Var)> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, var) in params.iter().chain(&leaves) {
            let want = &io[&format!("grad.{key}")];
            let got = grads.get(var.as_tensor()).cloned().unwrap_or_else(|| want.zeros_like().unwrap());
            let rel = relative(&got, want);
            let both_zero = max_abs(want) < 1e-7 && max_abs(&got) < 1e-7;
            assert!(rel <= 1e-4 || both_zero, "{name}: gradient of {key} differs by {rel} (relative)");
        }
    }
    assert_eq!(modes.len(), 5, "every mode has a reference case: {modes:?}");
    assert_eq!(three.len(), 5, "every mode has a three-modality case: {three:?}");
}
