//! The conv layer on the EEG encoder's first block (batch 32, 28 → 32 channels, k 7, s 2, p 3, 512 samples):
//! our conv kernel forward and forward+backward, against candle's native conv1d forward and conv2d over a
//! `(B, C, 1, L)` view; and the whole EEG encoder (4 conv → BatchNorm → ReLU blocks) in training mode,
//! forward+backward, and in evaluation mode (`cargo bench -p emofuse-encoders --bench conv`).

use std::hint::black_box;

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{Criterion, criterion_group, criterion_main};
use encoders::{Conv1d, Conv1dConfig, EegEncoder, EncoderConfig};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = Conv1dConfig { in_channels: 28, out_channels: 32, kernel: 7, stride: 2, padding: 3 };
    let x = Tensor::randn(0f32, 1.0, (32, 28, 512), &dev).expect("input");
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (32, 28, 7), &dev).expect("weight")).expect("var");
    let b = Var::from_tensor(&Tensor::zeros(32, DType::F32, &dev).expect("bias")).expect("var");
    let conv = Conv1d::from_tensors(&cfg, w.as_tensor().clone(), b.as_tensor().clone()).expect("conv");
    let mut g = c.benchmark_group("conv1d_b32_c28_l512");
    g.bench_function("kernel_forward", |bn| bn.iter(|| conv.forward(black_box(&x)).expect("forward")));
    g.bench_function("kernel_forward_backward", |bn| {
        bn.iter(|| {
            conv.forward(black_box(&x))
                .and_then(|y| y.sum_all())
                .and_then(|l| l.backward())
                .expect("backward")
        })
    });
    g.bench_function("candle_conv1d_forward", |bn| {
        bn.iter(|| black_box(&x).conv1d(w.as_tensor(), 3, 2, 1, 1).expect("forward"))
    });
    let w2 = w.as_tensor().unsqueeze(2).expect("view");
    g.bench_function("candle_conv2d_view_forward", |bn| {
        bn.iter(|| {
            let x4 = black_box(&x).pad_with_zeros(2, 3, 3).and_then(|p| p.unsqueeze(2)).expect("view");
            x4.conv2d(&w2, 0, 2, 1, 1).expect("forward")
        })
    });
    g.finish();

    let varmap = VarMap::new();
    let encoder =
        EegEncoder::new(&EncoderConfig::eeg(28), VarBuilder::from_varmap(&varmap, DType::F32, &dev))
            .expect("encoder");
    encoders::init_pytorch_default(&varmap, 0).expect("init");
    let mut g = c.benchmark_group("eeg_encoder_b32_c28_l512");
    g.bench_function("train_forward_backward", |bn| {
        bn.iter(|| {
            encoder
                .forward_t(black_box(&x), true)
                .and_then(|y| y.sum_all())
                .and_then(|l| l.backward())
                .expect("backward")
        })
    });
    g.bench_function("eval_forward", |bn| {
        bn.iter(|| encoder.forward_t(black_box(&x), false).expect("forward"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
