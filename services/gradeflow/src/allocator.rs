//! The process's allocator, and how the long-running commands tune it.
//!
//! mimalloc instead of the system allocator: the services allocate and free
//! many small JSON values, strings and futures per event, and glibc's malloc
//! was a fifth of their CPU time in the cycle benchmark's profile
//! (`docs/performance.md`). The `system-allocator` feature keeps the
//! system's allocator, for heap profilers that intercept `malloc`
//! (heaptrack).
//!
//! **Freed memory goes back at once.** mimalloc 3 keeps memory it no longer
//! uses for a second (`purge_delay`, 1,000 ms) before giving it back to the
//! system, in case it is wanted again. The services free and allocate in
//! waves (a writer batch, a page of events, a consumer's window), so a
//! second of retention shows up as resident memory: a 100k-dossier cycle
//! peaked at 385.8 MiB with the default and at 328.5 MiB with a delay of 0,
//! at the same throughput and about 3 % more system time, one
//! run each (`docs/performance.md`, "Giving memory back"). mimalloc reads its options
//! from the environment when the process starts, before `main`, and setting
//! one later takes an `unsafe` call this workspace forbids; so a service
//! command started without `MIMALLOC_PURGE_DELAY` re-executes itself once
//! with `MIMALLOC_PURGE_DELAY=0`, keeping its process id, arguments and the
//! rest of its environment. A value set by the operator is kept as given.

use std::ffi::OsString;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The variable mimalloc reads its purge delay from, in milliseconds.
pub const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// The purge delay the service commands run with unless told otherwise.
pub const PURGE_DELAY_MS: &str = "0";

/// What a service command must add to its environment before it runs: the
/// purge delay, unless `current` (the variable's value, if set) already
/// says one, or the process does not run on mimalloc.
pub fn missing_setting(current: Option<OsString>) -> Option<(&'static str, &'static str)> {
    if cfg!(feature = "system-allocator") || current.is_some() {
        None
    } else {
        Some((PURGE_DELAY_VAR, PURGE_DELAY_MS))
    }
}

/// Re-executes this process with the setting [`missing_setting`] names, if
/// any; returns only when none is missing or the re-execution failed (the
/// command then runs with mimalloc's defaults, which costs memory, not
/// correctness).
pub fn settle() {
    let Some((name, value)) = missing_setting(std::env::var_os(PURGE_DELAY_VAR)) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = reexec(exe, name, value);
    eprintln!("gradeflow: running with mimalloc's default purge delay: re-executing with {name}={value} failed: {error}");
}

#[cfg(unix)]
fn reexec(exe: std::path::PathBuf, name: &str, value: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(name, value)
        .exec()
}

#[cfg(not(unix))]
fn reexec(_exe: std::path::PathBuf, _name: &str, _value: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "re-executing is only done on Unix",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "system-allocator"))]
    fn a_missing_purge_delay_is_set_to_zero() {
        assert_eq!(missing_setting(None), Some(("MIMALLOC_PURGE_DELAY", "0")));
    }

    #[test]
    fn a_purge_delay_given_by_the_operator_is_kept() {
        assert_eq!(missing_setting(Some("250".into())), None);
        assert_eq!(missing_setting(Some("".into())), None);
    }
}
