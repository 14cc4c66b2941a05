//! Latency samples, percentiles, and what /proc says about processes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

/// Latencies (microseconds) and outcomes of one scenario.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub latencies_us: Vec<u64>,
    /// Answers by HTTP status (`"200"`, `"429"`, ...) or `"io"` for a
    /// request that got no answer.
    pub outcomes: BTreeMap<String, u64>,
}

impl Samples {
    pub fn record(&mut self, outcome: &str, latency: Duration) {
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        *self.outcomes.entry(outcome.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        for (outcome, count) in other.outcomes {
            *self.outcomes.entry(outcome).or_default() += count;
        }
    }

    pub fn count(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub fn ok(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(outcome, _)| outcome.starts_with('2'))
            .map(|(_, count)| count)
            .sum()
    }

    pub fn errors(&self) -> u64 {
        self.count() - self.ok()
    }

    /// p50/p95/p99/max in milliseconds.
    pub fn summary(&self) -> Value {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        json!({
            "p50_ms": percentile(&sorted, 0.50),
            "p95_ms": percentile(&sorted, 0.95),
            "p99_ms": percentile(&sorted, 0.99),
            "max_ms": sorted.last().map_or(0.0, |v| *v as f64 / 1000.0),
            "mean_ms": if sorted.is_empty() { 0.0 } else {
                sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0
            },
        })
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn percentile(sorted_us: &[u64], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[index] as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13
    // after the name; clock ticks are 100 a second on Linux.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in MiB.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Busy and total jiffies of the whole machine (/proc/stat).
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Everything about the machine's CPU use between two instants.
pub struct CpuWatch {
    servers: Vec<(u32, f64)>,
    driver: f64,
    machine: Option<(u64, u64)>,
}

impl CpuWatch {
    pub fn start(pids: &[u32]) -> Self {
        CpuWatch {
            servers: pids
                .iter()
                .map(|pid| (*pid, cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
            driver: self_cpu_seconds(),
            machine: machine_jiffies(),
        }
    }

    pub fn stop(&self) -> Value {
        let servers: f64 = self
            .servers
            .iter()
            .map(|(pid, before)| cpu_seconds(*pid).unwrap_or(*before) - before)
            .sum();
        let busy = match (self.machine, machine_jiffies()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1 - busy0) as f64 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        json!({
            "server_cpu_seconds": servers,
            "driver_cpu_seconds": self_cpu_seconds() - self.driver,
            "machine_busy_fraction": busy,
            "load_average": load_average(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7000], 0.99), 7.0);
    }

    #[test]
    fn reads_its_own_process() {
        assert!(memory_mib(std::process::id()).is_some_and(|(rss, peak)| rss > 0.0 && peak >= rss));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn counts_outcomes() {
        let mut samples = Samples::default();
        samples.record("200", Duration::from_millis(2));
        samples.record("429", Duration::from_millis(1));
        samples.record("io", Duration::from_millis(1));
        assert_eq!((samples.count(), samples.ok(), samples.errors()), (3, 1, 2));
    }
}
