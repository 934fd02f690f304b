//! The model against the PyTorch reference (parity of outputs, loss and gradients; parameter counts;
//! checkpoints) and its properties.

use candle_core::{DType, Device, Tensor};
use core_types::FusionMode;
use experiments::{EmotionModel, Error, ModelConfig, Presence};

mod common;
use common::{check_reference_set, config_named, max_abs, max_abs_diff, reference_dir, reference_dirs};

/// Saves `model` as a checkpoint with default preprocessing and identity normalisation over 4 channels.
fn save_identity(path: &std::path::Path, model: &EmotionModel) {
    let norm = experiments::data::Normalisation::identity(4);
    let meta = experiments::checkpoint::CheckpointMeta::new(model.config(), &Default::default(), &norm);
    experiments::checkpoint::save(path, model, &meta).unwrap();
}

fn audio_mask(p: &Tensor) -> Presence {
    Presence { audio: Some(p.clone()), ..Default::default() }
}

#[test]
fn parameter_counts_equal_the_reference() {
    for (name, want) in
        [("eeg_only", 120_357), ("concat", 182_821), ("cross_attention", 168_615), ("gated", 248_613)]
    {
        let model = EmotionModel::new(&config_named(name, 28), &Device::Cpu, 0).unwrap();
        assert_eq!(model.num_parameters(), want, "{name}");
    }
}

/// Eval intermediates and logits within 1e-5 absolute; the train-mode loss (batch statistics, dropout off)
/// and every parameter's gradient within 1e-4 relative (to the largest magnitude of that tensor).
#[test]
fn outputs_loss_and_gradients_match_pytorch() {
    for dir in reference_dirs() {
        check_reference_set(&dir);
    }
}

#[test]
fn checkpoints_round_trip_and_mismatches_are_listed() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
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

mod properties {
    use super::*;
    use candle_core::IndexOp;
    use proptest::prelude::*;

    fn model_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["eeg_only", "concat", "cross_attention", "gated"])
    }

    /// Uniform(−1, 1) values from a seeded xorshift generator.
    fn seeded(dims: &[usize], seed: u64) -> Tensor {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn inputs(batch: usize, channels: usize, len: usize, seed: u64) -> (Tensor, Tensor) {
        let eeg = seeded(&[batch, channels, len], seed);
        let audio = seeded(&[batch, 13, 60 + (seed % 40) as usize], seed ^ 0xA0D10);
        (eeg, audio)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_batch_and_length_gives_finite_outputs_and_gradients(
            name in model_name(),
            batch in 1usize..17,
            channels in prop::sample::select(vec![28usize, 30]),
            len in 32usize..600,
            seed in any::<u64>(),
        ) {
            let model = EmotionModel::new(&config_named(name, channels), &Device::Cpu, seed).unwrap();
            let (eeg, audio) = inputs(batch, channels, len, seed);
            let out = model.forward_intermediates(&eeg, Some(&audio), true).unwrap();
            prop_assert_eq!(out.logits.dims(), &[batch, 5]);
            prop_assert_eq!(out.eeg_latent.as_ref().unwrap().dims(), &[batch, 128]);
            prop_assert!(max_abs(&out.logits).is_finite());
            let labels = Tensor::from_vec((0..batch as u32).map(|i| i % 5).collect::<Vec<_>>(), batch, &Device::Cpu).unwrap();
            let train_grads = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap().backward().unwrap();
            // In eval mode (running statistics) no parameter is cut off from the loss.
            let eval_logits = model.forward(&eeg, Some(&audio), false).unwrap();
            let eval_grads = candle_nn::loss::cross_entropy(&eval_logits, &labels).unwrap().backward().unwrap();
            for (pname, var) in model.parameters() {
                let g = train_grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
                prop_assert!(max_abs(g).is_finite(), "{} {}: non-finite gradient", name, pname);
                let g = eval_grads.get(var.as_tensor()).unwrap();
                prop_assert!(max_abs(g) > 0.0, "{} {}: all-zero gradient", name, pname);
            }
        }

        #[test]
        fn eval_output_of_a_sample_ignores_its_batch(name in model_name(), batch in 2usize..9, seed in any::<u64>()) {
            let model = EmotionModel::new(&config_named(name, 28), &Device::Cpu, seed).unwrap();
            let (eeg, audio) = inputs(batch, 28, 256, seed);
            let all = model.forward(&eeg, Some(&audio), false).unwrap();
            let one = model.forward(&eeg.i(1..2).unwrap(), Some(&audio.i(1..2).unwrap()), false).unwrap();
            prop_assert!(max_abs_diff(&one, &all.i(1..2).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn wrong_inputs_are_typed_errors() {
        let model = EmotionModel::new(&ModelConfig::fused(28, FusionMode::Concat), &Device::Cpu, 0).unwrap();
        let (eeg, audio) = inputs(2, 28, 128, 0);
        assert!(matches!(model.forward(&eeg, None, false), Err(Error::Input(_))));
        let (wrong, _) = inputs(2, 30, 128, 0);
        assert!(matches!(model.forward(&wrong, Some(&audio), false), Err(Error::Encoders(_))));
        let (_, three) = inputs(3, 28, 128, 0);
        assert!(matches!(model.forward(&eeg, Some(&three), false), Err(Error::Shape(_))));
    }
}

/// 50 full-batch AdamW steps on a small separable problem reach ≥ 95 % training accuracy (evaluated in
/// eval mode) for every model.
#[test]
fn every_model_learns_a_separable_problem() {
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    let dev = Device::Cpu;
    let (n, channels, len) = (40usize, 8usize, 128usize);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
    let mut state = 12345u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    // Class k: a 4-cycle sine on EEG channel k, and MFCC row k raised by 1.
    let mut eeg = Vec::with_capacity(n * channels * len);
    let mut audio = Vec::with_capacity(n * 13 * 50);
    for &k in &labels {
        for c in 0..channels {
            for t in 0..len {
                let s = if c == k as usize {
                    (t as f32 * std::f32::consts::TAU * 4.0 / len as f32).sin() * 2.0
                } else {
                    0.0
                };
                eeg.push(s + 0.5 * noise());
            }
        }
        for r in 0..13 {
            for _ in 0..50 {
                audio.push(if r == k as usize { 1.0 } else { 0.0 } + 0.5 * noise());
            }
        }
    }
    let eeg = Tensor::from_vec(eeg, (n, channels, len), &dev).unwrap();
    let audio = Tensor::from_vec(audio, (n, 13, 50), &dev).unwrap();
    let y = Tensor::from_vec(labels.clone(), n, &dev).unwrap();
    for name in ["eeg_only", "concat", "cross_attention", "gated"] {
        let model = EmotionModel::new(&config_named(name, channels), &dev, 1).unwrap();
        let vars = model.parameters().into_iter().map(|(_, v)| v).collect();
        let mut opt = AdamW::new(vars, ParamsAdamW { lr: 3e-3, ..ParamsAdamW::default() }).unwrap();
        for _ in 0..50 {
            let logits = model.forward(&eeg, Some(&audio), true).unwrap();
            opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &y).unwrap()).unwrap();
        }
        let pred =
            model.forward(&eeg, Some(&audio), false).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let correct = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let acc = correct as f64 / n as f64;
        assert!(acc >= 0.95, "{name}: training accuracy {acc} after 50 steps");
    }
}

mod runs {
    use super::*;
    use std::path::PathBuf;

    use eav::synth::{SynthConfig, write_synthetic};
    use experiments::config::ExperimentConfig;
    use experiments::report::write_config;
    use experiments::results::Results;
    use experiments::run::{Quiet, run};

    /// A synthetic tree in a scratch folder that is removed when the returned guard is dropped.
    fn tree(name: &str, cfg: &SynthConfig) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix(&format!("experiments-{name}-")).tempdir().unwrap();
        let root = dir.path().join("tree");
        write_synthetic(&root, cfg, &|_| {}).unwrap();
        (dir, root)
    }

    /// Everything of each run but its wall time, as JSON.
    fn numbers(r: &Results) -> Vec<String> {
        r.runs
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.train_seconds = 0.0;
                serde_json::to_string(&x).unwrap()
            })
            .collect()
    }

    /// When only the audio carries the class, EEG+audio learns it and EEG-only stays near chance.
    #[test]
    fn audio_only_tree_separates_the_modalities() {
        let (_scratch, root) = tree(
            "audio-only",
            &SynthConfig { subjects: 1, trials: 40, eeg_signal: false, ..SynthConfig::default() },
        );
        let mut cfg = ExperimentConfig::new(root, vec![FusionMode::Concat]);
        cfg.train.epochs = 10;
        let r = run(&cfg, &Quiet).unwrap();
        let acc = |m: &str| r.summary.iter().find(|s| s.modality == m).unwrap().accuracy_mean;
        assert!(acc("eeg_audio") >= 0.8, "EEG+audio accuracy {}", acc("eeg_audio"));
        assert!(acc("audio_only") >= 0.8, "audio-only accuracy {}", acc("audio_only"));
        assert!(acc("eeg_only") <= 0.4, "EEG-only accuracy {}", acc("eeg_only"));
        // Without its audio the fused model cannot know the class, and does not pretend to.
        let absent = r
            .robustness
            .iter()
            .find(|x| x.modality == "eeg_audio" && x.condition == "audio_absent")
            .unwrap()
            .accuracy_mean;
        assert!(absent <= 0.45, "EEG+audio with audio absent: {absent}");
    }

    /// Fusion must not hurt: where only the EEG carries the class and every speaking trial holds a clean
    /// tone of random pitch (a decoy the fused model can memorise), the default fused training stays with
    /// EEG-only, with and without the audio, while the design's plain training falls behind.
    #[test]
    fn a_decoy_modality_does_not_drag_the_default_fused_model_down() {
        let synth = SynthConfig {
            subjects: 2,
            trials: 100,
            snr: 1.0,
            audio_signal: false,
            decoy_audio: true,
            ..SynthConfig::default()
        };
        let (_scratch, root) = tree("decoy", &synth);
        let mut cfg = ExperimentConfig::new(root, vec![FusionMode::Concat]);
        cfg.train.epochs = 10;
        let r = run(&cfg, &Quiet).unwrap();
        let acc = |r: &Results, m: &str, c: &str| {
            r.robustness.iter().find(|x| x.modality == m && x.condition == c).unwrap().accuracy_mean
        };
        let eeg = acc(&r, "eeg_only", "full");
        let (fused, absent) = (acc(&r, "eeg_audio", "full"), acc(&r, "eeg_audio", "audio_absent"));
        assert!(eeg >= 0.8, "EEG-only {eeg}");
        assert!(acc(&r, "audio_only", "full") <= 0.35, "the decoy carries no class");
        assert!(fused >= eeg - 0.05, "fused {fused} vs EEG-only {eeg}");
        assert!(absent >= eeg - 0.1, "fused without audio {absent} vs EEG-only {eeg}");
        // Late fusion gives the decoy's head and the audio-only model less weight than the EEG's.
        for r in r.runs.iter().filter(|r| r.modality == "eeg_audio") {
            let mix = r.output_mix.as_ref().unwrap();
            let weight = |m| mix.head(m) + mix.expert(m);
            assert!(
                weight(core_types::Modality::Audio) < weight(core_types::Modality::Eeg),
                "{}",
                mix.describe()
            );
        }
        cfg.unimodal_loss = 0.0;
        cfg.eeg_only = false;
        cfg.audio_only = false;
        let plain = acc(&run(&cfg, &Quiet).unwrap(), "eeg_audio", "full");
        assert!(plain < fused - 0.05, "plain training {plain} vs default {fused}");
    }

    /// Every model is evaluated under each condition that applies to it, on its test windows; the
    /// listening windows are a condition with `Trials::All`; noise lowers the audio-only accuracy.
    #[test]
    fn robustness_matrix_covers_every_condition_that_applies() {
        let (_scratch, root) =
            tree("robustness", &SynthConfig { subjects: 1, trials: 40, ..SynthConfig::default() });
        let mut cfg = ExperimentConfig::new(root, vec![FusionMode::Concat]);
        cfg.train.epochs = 3;
        cfg.trials = experiments::config::Trials::All;
        let r = run(&cfg, &Quiet).unwrap();
        let conditions = |m: &str| -> Vec<&str> {
            r.robustness.iter().filter(|x| x.modality == m).map(|x| x.condition.as_str()).collect()
        };
        assert_eq!(conditions("eeg_only"), ["full", "eeg_channels_half", "listening"]);
        assert_eq!(conditions("audio_only"), ["full", "audio_snr_20db", "audio_snr_10db", "audio_snr_0db"]);
        assert_eq!(
            conditions("eeg_audio"),
            [
                "full",
                "audio_absent",
                "eeg_absent",
                "audio_snr_20db",
                "audio_snr_10db",
                "audio_snr_0db",
                "eeg_channels_half",
                "listening"
            ]
        );
        let test = r.runs[0].windows[2];
        for x in &r.robustness {
            assert!((0.0..=1.0).contains(&x.accuracy_mean), "{x:?}");
            if x.condition == "listening" {
                assert!(x.windows > 0 && x.windows <= test + 4, "{x:?}");
            } else {
                assert_eq!(x.windows, test, "{x:?}");
            }
            assert_eq!(x.fusion_mode.is_some(), x.modality == "eeg_audio");
        }
        // The full condition is the main table's accuracy.
        for s in &r.summary {
            let full =
                r.robustness.iter().find(|x| x.modality == s.modality && x.condition == "full").unwrap();
            assert!((full.accuracy_mean - s.accuracy_mean).abs() < 1e-12);
        }
        let rel = experiments::robustness::relative(&r.robustness);
        assert_eq!(rel.len(), 3);
        assert!(rel.iter().all(|(_, v)| v.is_finite()));
    }

    /// Late fusion: the output mix is chosen on out-of-fold predictions (one extra model per fold,
    /// trained without it), or on the validation windows without extra training; the model that is
    /// tested is the one trained on every training window, so its fused classifier scores exactly what
    /// the model without late fusion scores; one fold is an error.
    #[test]
    fn late_fusion_chooses_the_mix_out_of_fold_and_tests_the_full_model() {
        use std::sync::Mutex;
        struct Settings(Mutex<Vec<String>>);
        impl experiments::run::Progress for Settings {
            fn epoch(&self, setting: &str, _log: &experiments::train::EpochLog) {
                let mut s = self.0.lock().unwrap();
                if !s.iter().any(|x| x == setting) {
                    s.push(setting.to_owned());
                }
            }
        }
        let (_scratch, root) =
            tree("late", &SynthConfig { subjects: 1, trials: 40, ..SynthConfig::default() });
        let mut cfg = ExperimentConfig::new(root, vec![FusionMode::Concat]);
        cfg.train.epochs = 3;
        (cfg.eeg_only, cfg.audio_only) = (false, false);
        (cfg.late_fusion_experts, cfg.late_fusion_temperatures) = (false, false);
        let seen = Settings(Mutex::new(Vec::new()));
        let mixed = run(&cfg, &seen).unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "subject 1 eeg_audio concat (fold 1/3 of the output mix)",
                "subject 1 eeg_audio concat (fold 2/3 of the output mix)",
                "subject 1 eeg_audio concat (fold 3/3 of the output mix)",
                "subject 1 eeg_audio concat",
            ]
        );
        let r = &mixed.runs[0];
        let mix = r.output_mix.as_ref().expect("a mix");
        let total = mix.fused + mix.heads.iter().map(|(_, w)| w).sum::<f64>();
        assert!((total - 1.0).abs() < 1e-9 && mix.experts.is_empty(), "{}", mix.describe());
        assert!(mix.temperatures.is_empty(), "untempered: {}", mix.describe());
        let outputs = r.output_accuracy.as_ref().unwrap();
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["audio", "eeg", "fused"]);
        // With experts and tempered outputs (the defaults), single-modality models are trained on every
        // fold, and, for the experts the mix weights, on every training window (here for the mix alone:
        // the comparison's rows are off); the model tested is the same fused model.
        (cfg.late_fusion_experts, cfg.late_fusion_temperatures) = (true, true);
        let seen = Settings(Mutex::new(Vec::new()));
        let with_experts = run(&cfg, &seen).unwrap();
        let r = &with_experts.runs[0];
        let mix = r.output_mix.as_ref().expect("a mix");
        let weighted =
            mix.experts.iter().map(|e| format!("subject 1 {}_only (expert of the output mix)", e.modality()));
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "subject 1 eeg_audio concat (fold 1/3 of the output mix)",
                "subject 1 eeg_audio concat (eeg_only expert, fold 1/3)",
                "subject 1 eeg_audio concat (audio_only expert, fold 1/3)",
                "subject 1 eeg_audio concat (fold 2/3 of the output mix)",
                "subject 1 eeg_audio concat (eeg_only expert, fold 2/3)",
                "subject 1 eeg_audio concat (audio_only expert, fold 2/3)",
                "subject 1 eeg_audio concat (fold 3/3 of the output mix)",
                "subject 1 eeg_audio concat (eeg_only expert, fold 3/3)",
                "subject 1 eeg_audio concat (audio_only expert, fold 3/3)",
                "subject 1 eeg_audio concat",
            ]
            .map(String::from)
            .into_iter()
            .chain(weighted)
            .collect::<Vec<_>>()
        );
        let total = mix.fused
            + mix.heads.iter().map(|(_, w)| w).sum::<f64>()
            + mix.experts.iter().map(|e| e.weight).sum::<f64>();
        assert!((total - 1.0).abs() < 1e-9, "{}", mix.describe());
        // Temperatures from the grid 2^(k/4), |k| ≤ 12, for the fused classifier and weighted outputs.
        for (output, t) in &mix.temperatures {
            let k = 4.0 * t.log2();
            assert!((k - k.round()).abs() < 1e-9 && k.abs() <= 12.0 && k != 0.0, "{output}={t}");
            let weight = match output.as_str() {
                "fused" => 1.0,
                o => match o.strip_suffix("_only") {
                    Some(m) => {
                        mix.experts.iter().find(|e| e.modality().to_string() == m).map_or(0.0, |e| e.weight)
                    }
                    None => mix.heads.iter().find(|(m, _)| m.to_string() == o).map_or(0.0, |(_, w)| *w),
                },
            };
            assert!(weight > 0.0, "a temperature for an unweighted output: {}", mix.describe());
        }
        let with = r.output_accuracy.as_ref().unwrap();
        assert_eq!(with["fused"], outputs["fused"], "the same fused model");
        for e in &mix.experts {
            assert!(e.weight > 0.0 && with.contains_key(&format!("{}_only", e.modality())), "{with:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        experiments::report::write_results(dir.path(), &cfg, &with_experts).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(
            report.contains("late fusion over 3 folds, even weights") && report.contains(&mix.describe()),
            "{report}"
        );
        // The cross-validation ensemble: no extra training (the fold models are those that chose the
        // mix), the same mix over the model and its three fold models, the same model trained on every
        // window; the checkpoint carries the members and loads back into a model that predicts.
        cfg.late_fusion_ensemble = true;
        let ckpt = tempfile::tempdir().unwrap();
        cfg.checkpoint_dir = Some(ckpt.path().to_path_buf());
        let seen = Settings(Mutex::new(Vec::new()));
        let ensemble = run(&cfg, &seen).unwrap();
        assert_eq!(seen.0.lock().unwrap().len(), 10 + mix.experts.len(), "no extra training");
        let e = &ensemble.runs[0];
        assert_eq!(e.output_mix.as_ref(), Some(mix), "the same choice");
        assert_eq!(e.output_accuracy.as_ref().unwrap()["fused"], outputs["fused"], "the same fused model");
        let path = e.checkpoint.as_ref().expect("a checkpoint");
        let (loaded, meta) = experiments::checkpoint::load(std::path::Path::new(path), &Device::Cpu).unwrap();
        assert_eq!(meta.model.ensemble, 3);
        let predictions =
            experiments::checkpoint::predict(&loaded, &meta, &cfg.data_dir, &[1], false).unwrap();
        assert!(!predictions.is_empty());
        for p in &predictions {
            let sum: f32 = p.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4 && p.probabilities.iter().all(|x| x.is_finite()), "{p:?}");
        }
        // A single-modality row is an ensemble too, of the fold models its experts already have: the
        // EEG-only row adds no training beyond its own, and the fused model is the same.
        cfg.eeg_only = true;
        let seen = Settings(Mutex::new(Vec::new()));
        let with_row = run(&cfg, &seen).unwrap();
        let trained = seen.0.lock().unwrap().clone();
        assert_eq!(trained.len(), 11 + mix.experts.len(), "{trained:?}");
        assert_eq!(trained[0], "subject 1 eeg_only none");
        assert!(trained[1].contains("eeg_only expert, fold 1/3"), "{trained:?}");
        let row = with_row.runs.iter().find(|r| r.modality == "eeg_only").unwrap();
        let (single, meta) =
            experiments::checkpoint::load(row.checkpoint.as_ref().unwrap(), &Device::Cpu).unwrap();
        assert_eq!((meta.model.ensemble, single.config().ensemble), (3, 3));
        let fused = with_row.runs.iter().find(|r| r.modality == "eeg_audio").unwrap();
        assert_eq!((fused.accuracy, fused.output_mix.as_ref()), (e.accuracy, Some(mix)));
        cfg.eeg_only = false;
        cfg.late_fusion_ensemble = false;
        cfg.checkpoint_dir = None;
        // Bagged weights: the held-out windows grouped by their trials (a misaligned grouping mixes
        // classes and is an error), weights in steps of 1/(10 · resamples), the same tested model. They
        // average best-fit choices: with the even choice they are an input error.
        cfg.late_fusion_bootstrap = 40;
        let err = run(&cfg, &Quiet).unwrap_err().to_string();
        assert!(err.contains("bagged weights") && err.contains("`best`"), "{err}");
        cfg.late_fusion_choice = experiments::config::MixChoice::Best;
        let bagged = run(&cfg, &Quiet).unwrap();
        let r = &bagged.runs[0];
        let mix = r.output_mix.as_ref().expect("a mix");
        let weights: Vec<f64> = std::iter::once(mix.fused)
            .chain(mix.heads.iter().map(|(_, w)| *w))
            .chain(mix.experts.iter().map(|e| e.weight))
            .collect();
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{}", mix.describe());
        assert!(weights.iter().all(|w| ((w * 400.0).round() - w * 400.0).abs() < 1e-9), "{}", mix.describe());
        assert_eq!(r.output_accuracy.as_ref().unwrap()["fused"], outputs["fused"], "the same fused model");
        experiments::report::write_results(dir.path(), &cfg, &bagged).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(report.contains("best-fit weights, with") && report.contains("bagged over 40"), "{report}");
        cfg.late_fusion_bootstrap = 0;
        cfg.late_fusion_folds = 0;
        let plain = run(&cfg, &Quiet).unwrap();
        assert!(plain.runs[0].output_mix.is_none() && plain.runs[0].output_accuracy.is_none());
        assert_eq!(
            plain.runs[0].accuracy, outputs["fused"],
            "the tested model is the one trained on everything"
        );
        // With a validation split the mix comes from its windows, without models on folds (the
        // experts are the single-modality models, trained here because the comparison's rows are off).
        // (Bagged over the validation windows' trials.)
        cfg.late_fusion_folds = 3;
        cfg.val_fraction = 0.34;
        cfg.late_fusion_bootstrap = 40;
        let seen = Settings(Mutex::new(Vec::new()));
        let val = run(&cfg, &seen).unwrap();
        cfg.late_fusion_bootstrap = 0;
        cfg.late_fusion_choice = experiments::config::MixChoice::Even;
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "subject 1 eeg_audio concat",
                "subject 1 eeg_only (expert of the output mix)",
                "subject 1 audio_only (expert of the output mix)"
            ]
        );
        assert!(val.runs[0].output_mix.is_some());
        cfg.late_fusion_folds = 1;
        assert!(run(&cfg, &Quiet).unwrap_err().to_string().contains("2 folds"));
        // An ensemble without fold models to make it of is an error, not a silent single model.
        cfg.late_fusion_ensemble = true;
        for (folds, val, unimodal) in [(0, 0.0, 3.0), (3, 0.34, 3.0), (3, 0.0, 0.0)] {
            (cfg.late_fusion_folds, cfg.val_fraction, cfg.unimodal_loss) = (folds, val, unimodal);
            let err = run(&cfg, &Quiet).unwrap_err().to_string();
            assert!(err.contains("cross-validation ensemble"), "{err}");
        }
    }

    /// The same config (also read back from its `config.json`) gives the same numbers.
    #[test]
    fn same_seed_same_results_and_config_json_repeats_the_run() {
        let (_scratch, root) =
            tree("determinism", &SynthConfig { subjects: 1, trials: 20, ..SynthConfig::default() });
        let mut cfg =
            ExperimentConfig::new(root.clone(), vec![FusionMode::Gated, FusionMode::CrossAttention]);
        cfg.train.epochs = 2;
        let a = run(&cfg, &Quiet).unwrap();
        write_config(&root.join("run"), &cfg).unwrap();
        let back: ExperimentConfig =
            serde_json::from_slice(&std::fs::read(root.join("run/config.json")).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let b = run(&back, &Quiet).unwrap();
        assert_eq!(numbers(&a), numbers(&b));
        let settings: Vec<&str> = a.runs.iter().map(|r| r.modality.as_str()).collect();
        assert_eq!(settings, ["eeg_only", "audio_only", "eeg_audio", "eeg_audio"]);
        // The fused runs expose what their fusion layer did on the test windows.
        let gated = a.runs.iter().find(|r| r.fusion_mode == "gated" && r.modality == "eeg_audio").unwrap();
        let gates = gated.gate_mean.as_ref().unwrap();
        assert_eq!(gates.len(), 256);
        assert!(gates.iter().all(|g| (0.0..=1.0).contains(g)));
        let xa = a.runs.iter().find(|r| r.fusion_mode == "cross_attention").unwrap();
        let e2a = xa.attention_e2a.as_ref().unwrap();
        assert_eq!((e2a.len(), e2a[0].len()), (8, 8));
        assert!(e2a.iter().all(|row| (row.iter().sum::<f32>() - 1.0).abs() < 1e-4), "rows are distributions");
        let w = xa.blend_weights.as_ref().unwrap();
        assert!((w[0] + w[1] - 1.0).abs() < 1e-6);
        assert_eq!(a.data_fingerprint.len(), 16);
        cfg.seed += 1;
        let c = run(&cfg, &Quiet).unwrap();
        assert_ne!(numbers(&a), numbers(&c), "another seed should give other numbers");
    }

    #[test]
    fn a_diverging_run_stops_with_a_named_error() {
        let (_scratch, root) =
            tree("diverge", &SynthConfig { subjects: 1, trials: 20, ..SynthConfig::default() });
        let mut cfg = ExperimentConfig::new(root, vec![]);
        cfg.train.lr = 1e30;
        cfg.train.grad_clip = None;
        cfg.train.epochs = 3;
        let err = run(&cfg, &Quiet).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        assert!(err.to_string().contains("epoch"));
    }

    #[test]
    fn missing_subjects_and_cuda_without_the_feature_are_clear_errors() {
        let (_scratch, root) =
            tree("errors", &SynthConfig { subjects: 1, trials: 10, ..SynthConfig::default() });
        let mut cfg = ExperimentConfig::new(root, vec![FusionMode::Concat]);
        cfg.subjects = vec![9];
        assert!(run(&cfg, &Quiet).unwrap_err().to_string().contains("subject 9 not found"));
        cfg.subjects = vec![];
        cfg.device = "cuda".into();
        if !candle_core::utils::cuda_is_available() {
            assert!(run(&cfg, &Quiet).unwrap_err().to_string().contains("--features cuda"));
        }
    }
}

/// With audio absent from a sample (a listening window), that sample's logits depend on its EEG alone in
/// every fused mode, whatever its audio rows hold; a batch without any audio runs; training through the
/// mask gives finite gradients.
#[test]
fn absent_audio_samples_ignore_their_audio_rows() {
    let dev = Device::Cpu;
    for &mode in FusionMode::ALL {
        let model = EmotionModel::new(&ModelConfig::fused(4, mode).with_dropout(0.0), &dev, 3).unwrap();
        let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 1, &dev).unwrap();
        let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 2, &dev).unwrap();
        let present = Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap();
        let logits = |a: &Tensor, p: &Tensor| {
            model.forward_present(&eeg, Some(a), &audio_mask(p), false).unwrap().logits
        };
        let base = logits(&audio, &present);
        let row = |i: usize, t: &Tensor| t.narrow(0, i, 1).unwrap();
        let noisy = ((row(1, &audio) * 7.0).unwrap() + 3.0).unwrap();
        let moved = Tensor::cat(&[row(0, &audio), noisy, row(2, &audio)], 0).unwrap();
        let d = max_abs_diff(&base, &logits(&moved, &present));
        assert!(d < 1e-5, "{mode}: an absent sample's audio moved the logits by {d}");
        // Every sample with audio: the same numbers as the unmasked call.
        let ones = Tensor::ones(3, DType::F32, &dev).unwrap();
        let plain = model.forward(&eeg, Some(&audio), false).unwrap();
        assert!(max_abs_diff(&logits(&audio, &ones), &plain) == 0.0, "{mode}");
        // No audio at all.
        let none = logits(&audio, &Tensor::zeros(3, DType::F32, &dev).unwrap());
        assert!(max_abs(&none).is_finite(), "{mode}");
        // Training through the mask.
        let out = model.forward_present(&eeg, Some(&audio), &audio_mask(&present), true).unwrap();
        let labels = Tensor::new(&[0u32, 2, 4], &dev).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.parameters() {
            if let Some(g) = grads.get(var.as_tensor()) {
                assert!(max_abs(g).is_finite(), "{mode}: gradient of {name}");
            }
        }
        let bad = Tensor::new(&[1f32, 0.5, 1.0], &dev).unwrap();
        assert!(model.forward_present(&eeg, Some(&audio), &audio_mask(&bad), false).is_err());
    }
}

/// With EEG absent from a sample, its logits depend on its audio alone in every fused mode; a sample with
/// neither modality is an error; a batch whose audio is absent everywhere needs no audio tensor.
#[test]
fn absent_eeg_samples_ignore_their_eeg_rows() {
    let dev = Device::Cpu;
    for &mode in FusionMode::ALL {
        let model = EmotionModel::new(&ModelConfig::fused(4, mode).with_dropout(0.0), &dev, 5).unwrap();
        let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 3, &dev).unwrap();
        let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 4, &dev).unwrap();
        let mask =
            Presence { eeg: Some(Tensor::new(&[1f32, 1.0, 0.0], &dev).unwrap()), ..Default::default() };
        let base = model.forward_present(&eeg, Some(&audio), &mask, false).unwrap().logits;
        let row = |i: usize, t: &Tensor| t.narrow(0, i, 1).unwrap();
        let noisy = ((row(2, &eeg) * 5.0).unwrap() - 2.0).unwrap();
        let moved = Tensor::cat(&[row(0, &eeg), row(1, &eeg), noisy], 0).unwrap();
        let d =
            max_abs_diff(&base, &model.forward_present(&moved, Some(&audio), &mask, false).unwrap().logits);
        assert!(d < 1e-5, "{mode}: an absent sample's EEG moved the logits by {d}");
        let neither = Presence {
            eeg: Some(Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap()),
            audio: Some(Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap()),
            video: None,
        };
        assert!(matches!(model.forward_present(&eeg, Some(&audio), &neither, false), Err(Error::Input(_))));
        let no_audio = audio_mask(&Tensor::zeros(3, DType::F32, &dev).unwrap());
        let eeg_alone = model.forward_present(&eeg, None, &no_audio, false).unwrap().logits;
        let with_rows = model.forward_present(&eeg, Some(&audio), &no_audio, false).unwrap().logits;
        assert!(max_abs_diff(&eeg_alone, &with_rows) < 1e-6, "{mode}");
        assert!(matches!(model.forward(&eeg, None, false), Err(Error::Input(_))));
    }
}

/// The audio-only model reads the audio alone: it has no EEG encoder, its tensor names are the fused
/// models' audio encoder and the classifier, and its logits do not move with the EEG.
#[test]
fn audio_only_model_reads_audio_alone() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::audio_only(4).with_dropout(0.0);
    assert_eq!(cfg.name(), "audio_only");
    let model = EmotionModel::new(&cfg, &dev, 1).unwrap();
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().all(|n| n.starts_with("audio_encoder.") || n.starts_with("classifier.")),
        "{names:?}"
    );
    let eeg = encoders::seeded_randn(0.0, 1.0, &[2, 4, 200], 5, &dev).unwrap();
    let other = encoders::seeded_randn(0.0, 1.0, &[2, 4, 200], 6, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[2, 13, 200], 7, &dev).unwrap();
    let a = model.forward(&eeg, Some(&audio), false).unwrap();
    assert_eq!(a.dims(), &[2, 5]);
    assert!(max_abs_diff(&a, &model.forward(&other, Some(&audio), false).unwrap()) == 0.0);
    assert!(matches!(model.forward(&eeg, None, false), Err(Error::Input(_))));
    // Its config survives a round trip, and a config without `single` (older side files) is EEG-only.
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(serde_json::from_value::<ModelConfig>(json.clone()).unwrap(), cfg);
    let mut old = serde_json::to_value(ModelConfig::eeg_only(4)).unwrap();
    old.as_object_mut().unwrap().remove("single");
    assert_eq!(serde_json::from_value::<ModelConfig>(old).unwrap().name(), "eeg_only");
}

/// Unimodal heads: one linear head per modality, named after every other tensor (so the other tensors'
/// initialisation is the plain model's), logits for the present samples only, and the fused prediction
/// unchanged by them.
#[test]
fn unimodal_heads_leave_the_fused_model_as_it_was() {
    let dev = Device::Cpu;
    let plain_cfg = ModelConfig::fused(4, FusionMode::Gated).with_dropout(0.0);
    let heads_cfg = ModelConfig { unimodal_loss: 1.0, ..plain_cfg.clone() };
    let plain = EmotionModel::new(&plain_cfg, &dev, 11).unwrap();
    let heads = EmotionModel::new(&heads_cfg, &dev, 11).unwrap();
    let extra: Vec<String> = heads
        .parameters()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !plain.parameters().iter().any(|(p, _)| p == n))
        .collect();
    assert_eq!(
        extra,
        [
            "unimodal_heads.audio.bias",
            "unimodal_heads.audio.weight",
            "unimodal_heads.eeg.bias",
            "unimodal_heads.eeg.weight"
        ]
    );
    let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 8, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 9, &dev).unwrap();
    let a = plain.forward(&eeg, Some(&audio), false).unwrap();
    let b = heads.forward_intermediates(&eeg, Some(&audio), false).unwrap();
    assert_eq!(max_abs_diff(&a, &b.logits), 0.0, "same initialisation, same fused logits");
    assert_eq!(b.unimodal_logits.len(), 2);
    let present = audio_mask(&Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap());
    let c = heads.forward_present(&eeg, Some(&audio), &present, true).unwrap();
    let (m, logits, mask) = &c.unimodal_logits[1];
    assert_eq!((*m, logits.dims()), (core_types::Modality::Audio, &[3usize, 5][..]));
    assert!(mask.is_some(), "the audio head's loss sees the audio presence");
}

/// The output mix: in evaluation the prediction is the weighted mixture of the fused classifier's and
/// the heads' probabilities, with a head leaving the mixture of samples that lack its modality; training
/// mode and the classifier's own logits are untouched; each output's logits are divided by its temperature
/// (1 where none is given); weights and temperatures the model cannot use are errors, and the mix survives
/// a checkpoint.
#[test]
fn output_mix_mixes_the_present_outputs_in_evaluation() {
    use core_types::Modality::{Audio, Eeg, Video};
    use experiments::OutputMix;
    use experiments::checkpoint::load;
    let dev = Device::Cpu;
    let mix = OutputMix {
        fused: 0.2,
        heads: vec![(Eeg, 0.5), (Audio, 0.3)],
        experts: Vec::new(),
        temperatures: [("fused".to_owned(), 0.5), ("audio".to_owned(), 2.0)].into(),
    };
    let cfg = ModelConfig {
        unimodal_loss: 1.0,
        output_mix: Some(mix.clone()),
        ..ModelConfig::fused(4, FusionMode::Concat)
    };
    let model = EmotionModel::new(&cfg, &dev, 3).unwrap();
    let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 10, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 11, &dev).unwrap();
    let present = audio_mask(&Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap());
    let out = model.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    let softmax = |t: &Tensor| candle_nn::ops::softmax(t, 1).unwrap().to_vec2::<f32>().unwrap();
    let tempered = |t: &Tensor, temperature: f64| softmax(&t.affine(1.0 / temperature, 0.0).unwrap());
    let (pf, pe, pa) = (
        tempered(&out.classifier_logits, 0.5),
        softmax(&out.unimodal_logits[0].1),
        tempered(&out.unimodal_logits[1].1, 2.0),
    );
    let got = softmax(&out.logits);
    for i in 0..3 {
        let a = if i == 1 { 0.0 } else { 0.3 };
        for c in 0..5 {
            let want = (0.2 * pf[i][c] + 0.5 * pe[i][c] + a * pa[i][c]) / (0.7 + a);
            assert!((got[i][c] - want).abs() < 1e-6, "sample {i} class {c}: {} vs {want}", got[i][c]);
        }
    }
    let plain = ModelConfig { output_mix: None, ..cfg.clone() };
    let plain =
        EmotionModel::new(&plain, &dev, 3).unwrap().forward_present(&eeg, Some(&audio), &present, false);
    assert_eq!(max_abs_diff(&plain.unwrap().logits, &out.classifier_logits), 0.0);
    let train = model.forward_present(&eeg, Some(&audio), &present, true).unwrap();
    assert_eq!(
        max_abs_diff(&train.logits, &train.classifier_logits),
        0.0,
        "training predicts with the classifier"
    );
    // With every weighted output absent, the fused classifier speaks.
    let only_audio = OutputMix {
        fused: 0.0,
        heads: vec![(Audio, 1.0)],
        experts: Vec::new(),
        temperatures: Default::default(),
    };
    let mut m2 = EmotionModel::new(&cfg, &dev, 3).unwrap();
    m2.set_output_mix(Some(only_audio)).unwrap();
    let o2 = m2.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    let got = softmax(&o2.logits);
    let (pf, pa) = (softmax(&out.classifier_logits), softmax(&out.unimodal_logits[1].1));
    assert!((0..5).all(|c| (got[1][c] - pf[1][c]).abs() < 1e-6 && (got[0][c] - pa[0][c]).abs() < 1e-6));
    // Weights the model cannot use.
    let weights =
        |fused, heads| OutputMix { fused, heads, experts: Vec::new(), temperatures: Default::default() };
    let temperature = |output: &str, t| OutputMix {
        temperatures: [(output.to_owned(), t)].into(),
        ..weights(0.5, vec![(Eeg, 0.5)])
    };
    for bad in [
        weights(0.0, vec![(Eeg, 0.0)]),
        weights(-0.5, vec![(Eeg, 1.0)]),
        weights(0.5, vec![(Video, 0.5)]),
        temperature("video", 1.0),
        temperature("eeg_only", 1.0),
        temperature("eeg", 0.0),
        temperature("fused", f64::NAN),
    ] {
        assert!(matches!(m2.set_output_mix(Some(bad.clone())), Err(Error::Input(_))), "{bad:?}");
    }
    let no_heads = ModelConfig { unimodal_loss: 0.0, ..cfg.clone() };
    assert!(matches!(EmotionModel::new(&no_heads, &dev, 3), Err(Error::Input(_))));
    // A checkpoint keeps the mix, and the loaded model predicts the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    save_identity(&path, &model);
    let (loaded, meta) = load(&path, &dev).unwrap();
    assert_eq!(meta.model.output_mix, Some(mix));
    let again = loaded.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    // (The training-mode pass above moved the running statistics: compare with the model as saved.)
    let now = model.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    assert_eq!(max_abs_diff(&again.logits, &now.logits), 0.0);
}

/// Single-modality experts in the output mix: with all the weight on the EEG expert, the fused model
/// predicts exactly what the trained EEG-only model predicts; an audio expert leaves the mixture of the
/// samples without audio; experts are saved in the checkpoint under `experts.{modality}.` and loaded back,
/// never trained with the fused model; an expert of another configuration or modality is an error.
#[test]
fn output_mix_experts_predict_as_the_single_model_and_survive_a_checkpoint() {
    use core_types::Modality::{Audio, Eeg};
    use experiments::checkpoint::load;
    use experiments::{MixExpert, OutputMix};
    let dev = Device::Cpu;
    let single = EmotionModel::new(&ModelConfig::eeg_only(4), &dev, 11).unwrap();
    let audio_single = EmotionModel::new(&ModelConfig::audio_only(4), &dev, 12).unwrap();
    let expert = |m: &EmotionModel, weight| MixExpert { weight, model: m.config().clone() };
    let fused_cfg = ModelConfig { unimodal_loss: 1.0, ..ModelConfig::fused(4, FusionMode::Concat) };
    let mut model = EmotionModel::new(&fused_cfg, &dev, 3).unwrap();
    let params_before: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    model
        .set_output_mix(Some(OutputMix {
            fused: 0.0,
            heads: vec![(Eeg, 0.0), (Audio, 0.0)],
            experts: vec![expert(&single, 1.0)],
            temperatures: Default::default(),
        }))
        .unwrap();
    let params: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(params, params_before, "experts are no parameters of the fused model");
    model.copy_expert(&single).unwrap();
    let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 12, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 13, &dev).unwrap();
    let present = audio_mask(&Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap());
    let out = model.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    let softmax = |t: &Tensor| candle_nn::ops::softmax(t, 1).unwrap().to_vec2::<f32>().unwrap();
    let want = softmax(&single.forward(&eeg, None, false).unwrap());
    let got = softmax(&out.logits);
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
    assert_eq!(out.expert_logits.len(), 1);
    assert!(model.forward_present(&eeg, Some(&audio), &present, true).unwrap().expert_logits.is_empty());
    // An audio expert leaves the samples without audio; the EEG expert keeps them.
    let mix = OutputMix {
        fused: 0.0,
        heads: vec![(Eeg, 0.0), (Audio, 0.0)],
        experts: vec![expert(&single, 0.5), expert(&audio_single, 0.5)],
        temperatures: Default::default(),
    };
    model.set_output_mix(Some(mix.clone())).unwrap();
    model.copy_expert(&single).unwrap();
    model.copy_expert(&audio_single).unwrap();
    let out = model.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    let pa = softmax(&audio_single.forward(&eeg, Some(&audio), false).unwrap());
    let got = softmax(&out.logits);
    for i in 0..3 {
        for c in 0..5 {
            let w = if i == 1 { want[i][c] } else { 0.5 * want[i][c] + 0.5 * pa[i][c] };
            assert!((got[i][c] - w).abs() < 1e-6, "sample {i} class {c}: {} vs {w}", got[i][c]);
        }
    }
    // The checkpoint carries the experts; a model loaded from it predicts the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experts.safetensors");
    save_identity(&path, &model);
    let names = candle_core::safetensors::load(&path, &dev).unwrap();
    assert!(names.keys().any(|k| k.starts_with("experts.eeg.eeg_encoder.")));
    assert!(names.keys().any(|k| k.starts_with("experts.audio.audio_encoder.")));
    let (loaded, meta) = load(&path, &dev).unwrap();
    assert_eq!(meta.model.output_mix, Some(mix.clone()));
    let again = loaded.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    assert_eq!(max_abs_diff(&again.logits, &out.logits), 0.0);
    // A checkpoint whose experts are missing is a mismatch naming them.
    let bare = dir.path().join("bare.safetensors");
    EmotionModel::new(&fused_cfg, &dev, 3).unwrap().save(&bare).unwrap();
    match loaded.load(&bare) {
        Err(Error::CheckpointMismatch { missing, .. }) => {
            assert!(missing.iter().all(|n| n.starts_with("experts.")) && !missing.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Errors: a trained model the mix has no expert for; experts the model cannot read, or two of one.
    let other = EmotionModel::new(&ModelConfig::eeg_only(4).with_dropout(0.1), &dev, 1).unwrap();
    assert!(matches!(model.copy_expert(&other), Err(Error::Input(_))));
    let video = EmotionModel::new(&ModelConfig::video_only(4), &dev, 1).unwrap();
    for experts in [vec![expert(&video, 1.0)], vec![expert(&single, 0.5), expert(&single, 0.5)]] {
        let bad = OutputMix { fused: 0.0, heads: Vec::new(), experts, temperatures: Default::default() };
        assert!(matches!(model.set_output_mix(Some(bad)), Err(Error::Input(_))));
    }
    let fused_expert = MixExpert { weight: 1.0, model: fused_cfg.clone() };
    let bad = OutputMix {
        fused: 0.0,
        heads: Vec::new(),
        experts: vec![fused_expert],
        temperatures: Default::default(),
    };
    assert!(matches!(model.set_output_mix(Some(bad)), Err(Error::Input(_))));
}

/// The cross-validation ensemble: in evaluation the prediction is the mean of the model's and its
/// members' (mixed) probabilities (training is the model's alone); members are stored under `members.{i}.`
/// and loaded back; a member of another configuration, or one the ensemble does not have, is an error.
#[test]
fn ensemble_members_average_the_mixed_probabilities_and_survive_a_checkpoint() {
    use core_types::Modality::{Audio, Eeg};
    use experiments::OutputMix;
    use experiments::checkpoint::load;
    let dev = Device::Cpu;
    let mix = OutputMix {
        fused: 0.3,
        heads: vec![(Eeg, 0.5), (Audio, 0.2)],
        experts: Vec::new(),
        temperatures: [("eeg".to_owned(), 2.0)].into(),
    };
    let single_cfg = ModelConfig {
        unimodal_loss: 1.0,
        output_mix: Some(mix.clone()),
        ..ModelConfig::fused(4, FusionMode::Gated)
    };
    let alone = EmotionModel::new(&single_cfg, &dev, 3).unwrap();
    let folds =
        [EmotionModel::new(&single_cfg, &dev, 5).unwrap(), EmotionModel::new(&single_cfg, &dev, 6).unwrap()];
    let model = EmotionModel::ensemble_of(&alone, &[&folds[0], &folds[1]]).unwrap();
    assert_eq!(model.config().ensemble, 2);
    assert!(matches!(EmotionModel::ensemble_of(&model, &[&folds[0]]), Err(Error::Input(_))), "nested");
    let eeg = encoders::seeded_randn(0.0, 1.0, &[3, 4, 200], 20, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[3, 13, 200], 21, &dev).unwrap();
    let present = audio_mask(&Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap());
    let probs = |m: &EmotionModel| {
        let logits = m.forward_present(&eeg, Some(&audio), &present, false).unwrap().logits;
        candle_nn::ops::softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap()
    };
    let (got, own, a, b) = (probs(&model), probs(&alone), probs(&folds[0]), probs(&folds[1]));
    for i in 0..3 {
        for c in 0..5 {
            let want = (own[i][c] + a[i][c] + b[i][c]) / 3.0;
            assert!((got[i][c] - want).abs() < 1e-6, "sample {i} class {c}: {} vs {want}", got[i][c]);
        }
    }
    assert!((0..3).any(|i| (got[i][0] - own[i][0]).abs() > 1e-4), "the members count");
    // Training predicts with the model's own classifier.
    let train = model.forward_present(&eeg, Some(&audio), &present, true).unwrap();
    assert_eq!(max_abs_diff(&train.logits, &train.classifier_logits), 0.0);
    // A single-modality model's ensemble averages its members' softmax outputs.
    let singles: Vec<EmotionModel> =
        (0..3).map(|s| EmotionModel::new(&ModelConfig::eeg_only(4), &dev, 30 + s).unwrap()).collect();
    let single_ensemble = EmotionModel::ensemble_of(&singles[0], &[&singles[1], &singles[2]]).unwrap();
    let eeg_probs = |m: &EmotionModel| {
        let logits = m.forward(&eeg, None, false).unwrap();
        candle_nn::ops::softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap()
    };
    let got = eeg_probs(&single_ensemble);
    let each: Vec<_> = singles.iter().map(eeg_probs).collect();
    for i in 0..3 {
        for c in 0..5 {
            let want = (each[0][i][c] + each[1][i][c] + each[2][i][c]) / 3.0;
            assert!((got[i][c] - want).abs() < 1e-6, "EEG-only ensemble, sample {i} class {c}");
        }
    }
    // Wrong members.
    assert!(matches!(model.copy_member(2, &folds[0]), Err(Error::Input(_))));
    let concat =
        ModelConfig { fusion: ModelConfig::fused(4, FusionMode::Concat).fusion, ..single_cfg.clone() };
    let other = EmotionModel::new(&concat, &dev, 5).unwrap();
    assert!(matches!(model.copy_member(0, &other), Err(Error::Input(_))));
    // A checkpoint holds every member, and the loaded model predicts the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ensemble.safetensors");
    save_identity(&path, &model);
    let stored = candle_core::safetensors::load(&path, &dev).unwrap();
    assert!(stored.keys().any(|k| k.starts_with("members.1.eeg_encoder.")), "{:?}", stored.keys());
    let (loaded, meta) = load(&path, &dev).unwrap();
    assert_eq!(meta.model.ensemble, 2);
    let now = model.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    let again = loaded.forward_present(&eeg, Some(&audio), &present, false).unwrap();
    assert_eq!(max_abs_diff(&again.logits, &now.logits), 0.0);
}

/// Three modalities in every fused mode: each sample's logits depend only on the modalities it has (the
/// rows of an absent one can hold anything), a sample with one modality gives finite logits and finite
/// gradients in training, a sample with none is an error, and the video-only model reads its video alone.
#[test]
fn three_modalities_mask_absent_rows_in_every_mode() {
    use core_types::Modality::{Audio, Eeg, Video};
    use experiments::Inputs;
    let dev = Device::Cpu;
    let eeg = encoders::seeded_randn(0.0, 1.0, &[4, 4, 200], 14, &dev).unwrap();
    let audio = encoders::seeded_randn(0.0, 1.0, &[4, 13, 200], 15, &dev).unwrap();
    let video = encoders::seeded_randn(0.0, 1.0, &[4, 10, 16, 16], 16, &dev).unwrap();
    let mask = |v: [f32; 4]| Some(Tensor::new(&v, &dev).unwrap());
    // Sample 0 has all three, 1 EEG alone, 2 audio alone, 3 video alone.
    let presence = Presence {
        eeg: mask([1.0, 1.0, 0.0, 0.0]),
        audio: mask([1.0, 0.0, 1.0, 0.0]),
        video: mask([1.0, 0.0, 0.0, 1.0]),
    };
    let scramble = |t: &Tensor, keep: &[usize]| -> Tensor {
        let rows: Vec<Tensor> = (0..4)
            .map(|i| {
                let r = t.narrow(0, i, 1).unwrap();
                if keep.contains(&i) { r } else { ((r * 3.0).unwrap() + 1.0).unwrap() }
            })
            .collect();
        Tensor::cat(&rows, 0).unwrap()
    };
    for &mode in FusionMode::ALL {
        let cfg = ModelConfig::fused_over(4, mode, &[Eeg, Audio, Video]).with_dropout(0.0);
        assert_eq!(cfg.modalities(), [Eeg, Audio, Video]);
        let model = EmotionModel::new(&cfg, &dev, 3).unwrap();
        let inputs = Inputs { eeg: &eeg, audio: Some(&audio), video: Some(&video) };
        let base = model.forward_inputs(inputs, &presence, false).unwrap();
        assert_eq!(base.video_latent.as_ref().unwrap().dims(), &[4, 128]);
        // Rows of absent modalities changed: nothing moves.
        let (e2, a2, v2) = (scramble(&eeg, &[0, 1]), scramble(&audio, &[0, 2]), scramble(&video, &[0, 3]));
        let moved = Inputs { eeg: &e2, audio: Some(&a2), video: Some(&v2) };
        let d = max_abs_diff(&base.logits, &model.forward_inputs(moved, &presence, false).unwrap().logits);
        assert!(d < 1e-5, "{mode}: absent rows moved the logits by {d}");
        // Training with single-modality samples: finite logits and gradients.
        let out = model.forward_inputs(inputs, &presence, true).unwrap();
        let labels = Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap();
        let grads = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap().backward().unwrap();
        let mut video_grads = 0;
        for (name, var) in model.parameters() {
            if let Some(g) = grads.get(var.as_tensor()) {
                assert!(max_abs(g).is_finite(), "{mode}: gradient of {name}");
                video_grads += usize::from(name.starts_with("video_encoder."));
            }
        }
        assert!(video_grads > 0, "{mode}: the video encoder gets gradients");
        // No modality at all in a sample; video missing where a sample has it.
        let none = Presence { video: mask([1.0, 0.0, 0.0, 0.0]), ..presence.clone() };
        assert!(matches!(model.forward_inputs(inputs, &none, false), Err(Error::Input(_))));
        let no_video = Inputs { video: None, ..inputs };
        assert!(matches!(model.forward_inputs(no_video, &presence, false), Err(Error::Input(_))));
    }
    let cfg = ModelConfig::video_only(4).with_dropout(0.0);
    assert_eq!(cfg.name(), "video_only");
    let model = EmotionModel::new(&cfg, &dev, 1).unwrap();
    assert!(
        model
            .parameters()
            .iter()
            .all(|(n, _)| n.starts_with("video_encoder.") || n.starts_with("classifier."))
    );
    let a = model.forward_inputs(
        Inputs { eeg: &eeg, audio: None, video: Some(&video) },
        &Presence::default(),
        false,
    );
    let b = model.forward_inputs(
        Inputs { eeg: &scramble(&eeg, &[]), audio: Some(&audio), video: Some(&video) },
        &Presence::default(),
        false,
    );
    assert!(max_abs_diff(&a.unwrap().logits, &b.unwrap().logits) == 0.0);
    assert!(model.forward(&eeg, Some(&audio), false).is_err(), "the video-only model needs video");
    // The config round-trips; a model without video writes no video settings.
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), cfg);
    let plain = serde_json::to_string(&ModelConfig::fused(4, FusionMode::Concat)).unwrap();
    assert!(!plain.contains("video"), "{plain}");
}
