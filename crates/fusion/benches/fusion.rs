//! Each fusion mode, forward and forward + backward, batch 32 (`cargo bench -p emofuse-fusion`).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use core_types::{FusionMode, Latent};
use criterion::{Criterion, criterion_group, criterion_main};
use fusion::{Fusion, FusionConfig};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let latent = |seed: f32| {
        let t = Tensor::arange(0f32, 32.0 * 128.0, &dev)
            .and_then(|t| (t * f64::from(0.001 * seed))?.sin())
            .and_then(|t| t.reshape((32, 128)));
        Latent::new(t.expect("latent"), 128).expect("shape")
    };
    let (e, a) = (latent(1.0), latent(2.0));
    let mut g = c.benchmark_group("fusion_b32");
    for mode in FusionMode::ALL.iter().copied() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let f =
            Fusion::new(&FusionConfig { mode, dropout: 0.0, ..FusionConfig::default() }, vb).expect("fusion");
        g.bench_function(format!("{mode}_forward"), |b| {
            b.iter(|| f.fuse(black_box(&e), black_box(&a), false).expect("forward"))
        });
        g.bench_function(format!("{mode}_forward_backward"), |b| {
            b.iter(|| {
                let y = f.fuse(black_box(&e), black_box(&a), true).expect("forward");
                y.tensor().sum_all().and_then(|l| l.backward()).expect("backward")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
