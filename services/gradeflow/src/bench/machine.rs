//! What a benchmark ran on: processor, cores and memory of this machine (from
//! `/proc` on Linux), and the date. A figure without its machine cannot be
//! compared with anything, so the report starts with these.

use std::fmt;

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `model name` of the first processor, if known.
    pub cpu: Option<String>,
    /// Cores this process may use.
    pub cores: usize,
    /// Total memory in KiB, if known.
    pub memory_kib: Option<u64>,
}

impl Machine {
    /// This machine, as far as `/proc` tells (Linux); unknown parts stay
    /// `None` elsewhere.
    pub fn this() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self {
            cpu: cpu_model(&read("/proc/cpuinfo")),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib: mem_total_kib(&read("/proc/meminfo")),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} cores, ",
            self.cpu.as_deref().unwrap_or("unknown processor"),
            self.cores
        )?;
        match self.memory_kib {
            Some(kib) => write!(f, "{:.1} GiB memory", kib as f64 / (1024.0 * 1024.0)),
            None => f.write_str("unknown memory"),
        }
    }
}

/// The `model name` of the first processor in `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `MemTotal` in KiB from `/proc/meminfo` text.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_processor_are_read_from_proc_text() {
        let meminfo = "MemTotal:       24683520 kB\nMemFree:        19386368 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(24_683_520));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn the_machine_reads_as_one_line() {
        let m = Machine {
            cpu: Some("AMD EPYC".into()),
            cores: 2,
            memory_kib: Some(24_683_520),
        };
        assert_eq!(m.to_string(), "AMD EPYC, 2 cores, 23.5 GiB memory");
    }
}
