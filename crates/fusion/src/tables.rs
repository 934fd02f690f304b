//! Constant tables that depend only on step times and sizes (rotation angles, time encodings), built once
//! per thread and reused: a model sees the same few step grids in every batch, and rebuilding them cost a
//! transcendental call per value on every forward pass (a third of a batch-1 temporal forward).

use std::cell::RefCell;

use candle_core::{DType, DeviceLocation, Tensor};

/// What a table is, for the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rotation,
    TimeEncoding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    kind: Kind,
    times: Vec<u64>,
    sizes: (usize, usize),
    dtype: DType,
    device: DeviceLocation,
}

/// Entries kept per thread (oldest dropped first).
const CAPACITY: usize = 32;

thread_local! {
    static CACHE: RefCell<Vec<(Key, Vec<Tensor>)>> = const { RefCell::new(Vec::new()) };
}

/// The tables `make` builds for `(kind, times, sizes)` in `like`'s dtype and device, from the cache when
/// this thread built them before.
pub(crate) fn cached(
    kind: Kind,
    times: &[f64],
    sizes: (usize, usize),
    like: &Tensor,
    make: impl FnOnce() -> candle_core::Result<Vec<Tensor>>,
) -> candle_core::Result<Vec<Tensor>> {
    let key = Key {
        kind,
        times: times.iter().map(|t| t.to_bits()).collect(),
        sizes,
        dtype: like.dtype(),
        device: like.device().location(),
    };
    if let Some(hit) = CACHE.with_borrow(|c| c.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())) {
        return Ok(hit);
    }
    let tables = make()?;
    CACHE.with_borrow_mut(|c| {
        if c.len() == CAPACITY {
            c.remove(0);
        }
        c.push((key, tables.clone()));
    });
    Ok(tables)
}
