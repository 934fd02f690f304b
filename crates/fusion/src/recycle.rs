//! Buffers the long-sequence attention op hands back after use and takes again on its next call: its
//! `(B, H, Tq, Tk)` weights (8 MB per call in training at batch 32, 64 MB in evaluation at batch 256) and
//! its per-head blocks. A fresh buffer is zeroed by this process and, before that, cleared page by page
//! by the kernel; a recycled one is neither. Every buffer taken here is overwritten whole before it is
//! read (each user says so where it takes one), so what it held before never reaches a result.

use std::sync::Mutex;

use encoders::cpu_op::{Real, zeros};

/// The most bytes the pools keep; a buffer that would exceed it is freed instead.
const MAX_BYTES: usize = 512 << 20;

/// The element types with a pool.
pub(crate) trait Recycle: Real {
    /// This type's pool.
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

impl Recycle for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        &POOL
    }
}

impl Recycle for f64 {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        static POOL: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
        &POOL
    }
}

fn lock<T: Recycle>() -> std::sync::MutexGuard<'static, Vec<Vec<T>>> {
    T::pool().lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A buffer of `len` elements whose values are unspecified (zeros when it is new): the caller overwrites
/// every element before reading any.
pub(crate) fn take<T: Recycle>(len: usize) -> Vec<T> {
    let mut pool = lock::<T>();
    match pool.iter().position(|v| v.len() == len) {
        Some(i) => pool.swap_remove(i),
        None => {
            drop(pool);
            zeros(len)
        }
    }
}

/// Hands `buffer` back for a later [`take`] of its length (or frees it, when the pools are full).
pub(crate) fn give<T: Recycle>(buffer: Vec<T>) {
    let mut pool = lock::<T>();
    let held: usize = pool.iter().map(Vec::len).sum();
    if (held + buffer.len()) * std::mem::size_of::<T>() <= MAX_BYTES {
        pool.push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer given back is the one the next take of its length gets; other lengths get fresh zeros.
    #[test]
    fn a_given_buffer_comes_back_for_its_length_only() {
        let len = 12_345;
        let mut a = take::<f64>(len);
        assert_eq!(a.len(), len);
        a.fill(7.0);
        let ptr = a.as_ptr();
        give(a);
        let other = take::<f64>(len + 1);
        assert!(other.iter().all(|v| *v == 0.0));
        let b = take::<f64>(len);
        assert_eq!((b.as_ptr(), b.len()), (ptr, len));
        // Too large for the pools: freed, not kept.
        give(vec![0f32; MAX_BYTES / 4 + 1]);
        assert!(lock::<f32>().iter().all(|v| v.len() != MAX_BYTES / 4 + 1));
    }
}
