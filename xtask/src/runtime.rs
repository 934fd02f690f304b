//! The thread count, fixed in the environment at the top of `main`, before any thread pool exists.
//!
//! rayon sizes its pool from `RAYON_NUM_THREADS` when the pool starts, and so does candle (its element-wise
//! "barrier pool", and every CPU matrix product: `candle_core::utils::get_num_threads`, which when the
//! variable is unset falls back to `num_cpus::get_physical()`, reading and parsing `/proc/cpuinfo` each
//! time). So `--threads` has to go through the variable, and it is always set: to `--threads` when given,
//! else to what rayon would use (all available CPUs), unless the user set it.
//!
//! candle's barrier pool also spins after each element-wise op, 25 000 `pause` instructions by default
//! (`CANDLE_BARRIER_POOL_SPIN_LIMIT`), before its worker sleeps. With as many compute threads as cores,
//! that spinning worker takes a core from the threads doing the work: in a profile of the temporal mode's
//! training on 2 cores it was 13 % of all CPU time. [`fix_thread_count`] sets the limit to 0 (the worker
//! sleeps at once) unless the user set it.
//!
//! Writing the environment is `unsafe` because another thread could read it at the same time; this module
//! does it only before the program has started any thread.
#![allow(unsafe_code)]

/// The value for `RAYON_NUM_THREADS`, or `None` to leave it as it is: `--threads` wins, then the user's
/// own setting (`current`), then the number of available CPUs (`available`).
pub fn thread_setting(threads: Option<usize>, current: Option<String>, available: usize) -> Option<String> {
    match (threads, current) {
        (Some(n), _) => Some(n.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some(available.max(1).to_string()),
    }
}

/// Sets `RAYON_NUM_THREADS` per [`thread_setting`], and candle's spin limit to 0 unless set. Call it
/// first thing in `main`, while the process has one thread.
pub fn fix_thread_count(threads: Option<usize>) {
    let available = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let current = std::env::var("RAYON_NUM_THREADS").ok().filter(|v| v.parse::<usize>().is_ok_and(|n| n > 0));
    if let Some(value) = thread_setting(threads, current, available) {
        // SAFETY: called at the start of `main`, before this program starts any thread (rayon's and
        // candle's pools start lazily, on first use), so nothing reads or writes the environment
        // concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", value) };
    }
    if std::env::var_os(SPIN_LIMIT).is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var(SPIN_LIMIT, "0") };
    }
}

/// candle's spin limit for its element-wise pool (see the module docs).
const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Forces the matrix products' instruction set: `--isa`, else `$EMOFUSE_ISA`, else the detected one. A
/// `--isa` is also written to `EMOFUSE_ISA`, so that the programs this one starts (SLURM tasks) use it
/// too. Call it at the start of `main`, while the process has one thread.
///
/// # Errors
/// An unknown name in `EMOFUSE_ISA`, or a set this CPU cannot run.
pub fn choose_isa(flag: Option<encoders::Isa>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let chosen = match (flag, std::env::var("EMOFUSE_ISA")) {
        (Some(isa), _) => {
            // SAFETY: as in `fix_thread_count`: no other thread exists yet.
            unsafe { std::env::set_var("EMOFUSE_ISA", isa.name()) };
            Some(isa)
        }
        (None, Ok(name)) if !name.is_empty() => Some(name.parse().context("EMOFUSE_ISA")?),
        (None, _) => None,
    };
    encoders::force_isa(chosen).context(if flag.is_some() { "--isa" } else { "EMOFUSE_ISA" })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_flag_then_user_setting_then_all_cpus() {
        assert_eq!(thread_setting(Some(1), Some("4".into()), 2).as_deref(), Some("1"));
        assert_eq!(thread_setting(None, Some("4".into()), 2), None);
        assert_eq!(thread_setting(None, None, 2).as_deref(), Some("2"));
        assert_eq!(thread_setting(None, None, 0).as_deref(), Some("1"));
    }
}
