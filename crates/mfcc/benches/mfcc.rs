//! MFCC throughput on 60 s of 16 kHz audio with the project configuration, in f64 and in f32
//! (`cargo bench -p emofuse-mfcc`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mfcc::{Mfcc, MfccConfig};

fn bench(c: &mut Criterion) {
    let planner = Mfcc::new(MfccConfig::project()).expect("the project config is valid");
    let single = Mfcc::<f32>::with_precision(MfccConfig::project()).expect("the project config is valid");
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let y: Vec<f32> = (0..60 * 16_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.1 * ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect();
    let mut group = c.benchmark_group("mfcc");
    group.throughput(Throughput::Elements(y.len() as u64));
    group
        .bench_function("project_60s_16k", |b| b.iter(|| planner.mfcc(black_box(&y)).expect("finite input")));
    group.bench_function("project_60s_16k_f32", |b| {
        b.iter(|| single.mfcc(black_box(&y)).expect("finite input"));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
