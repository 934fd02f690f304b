//! The emofuse crates inside another program: MFCCs of a second of speech-like audio, an EEG and an audio
//! encoder, and a fusion layer with the audio absent from one sample.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use core_types::{FusionMode, Modality};
use encoders::{AudioEncoder, EegEncoder, EncoderConfig};
use fusion::{Fusion, FusionConfig, ModalityInput};
use mfcc::{Mfcc, MfccConfig};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    // A 200 Hz tone with two harmonics, 1 s at 16 kHz → MFCC (13 coefficients × frames).
    let tone: Vec<f32> = (0..16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            (std::f32::consts::TAU * 200.0 * t).sin() + 0.5 * (std::f32::consts::TAU * 400.0 * t).sin()
        })
        .collect();
    let features = Mfcc::<f32>::with_precision(MfccConfig::project())?.mfcc(&tone)?;
    let (coefficients, frames) = features.shape();
    let one = Tensor::from_slice(features.as_slice(), (1, coefficients, frames), &dev)?;
    let audio = Tensor::cat(&[&one, &one], 0)?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let eeg_encoder = EegEncoder::new(&EncoderConfig::eeg(30), vb.pp("eeg_encoder"))?;
    let audio_encoder = AudioEncoder::new(&EncoderConfig::audio(), vb.pp("audio_encoder"))?;
    let fusion =
        Fusion::new(&FusionConfig { mode: FusionMode::Gated, ..FusionConfig::default() }, vb.pp("fusion"))?;

    let eeg = Tensor::randn(0f32, 1.0, (2, 30, 500), &dev)?; // two 5 s windows at 100 Hz
    let inputs = [
        ModalityInput::new(Modality::Eeg, eeg_encoder.encode(&eeg, false)?),
        ModalityInput::new(Modality::Audio, audio_encoder.encode(&audio, false)?)
            .with_presence(Tensor::new(&[1f32, 0.0], &dev)?), // the second window has no speech
    ];
    let fused = fusion.fuse_set(&inputs, false)?.fused;
    println!("MFCC {coefficients}×{frames}; fused {:?}", fused.dims());
    assert_eq!(fused.dims(), &[2, 128]);
    Ok(())
}
