//! What the benchmarks read of a process from /proc: CPU time and memory.

use crate::control::Error;

/// User and system CPU seconds of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("a /proc stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .ok_or("utime and stime in /proc stat")?
        .iter()
        .map(|field| field.parse::<f64>().unwrap_or(0.0))
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / per_second)
}

/// User and system CPU seconds of this process.
pub fn own_cpu_seconds() -> Result<f64, Error> {
    cpu_seconds(std::process::id())
}

/// The resident set size of process `pid` now (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> Result<u64, Error> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// The peak resident set size of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64, Error> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no {field} line in /proc/{pid}/status").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_and_memory() {
        let pid = std::process::id();
        // The peak is read after the current size: it never falls, while
        // other tests' threads may grow the process between two reads.
        let now = rss(pid).unwrap();
        assert!(now > 0);
        assert!(peak_rss(pid).unwrap() >= now);
        assert!(own_cpu_seconds().unwrap() >= 0.0);
    }
}
