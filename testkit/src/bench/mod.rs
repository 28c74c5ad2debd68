//! Load generators behind `cascade bench`. They drive real services over
//! real sockets and report throughput and latency percentiles; they assert
//! nothing (speed is measured, not tested).

pub mod api;
pub mod placement;
pub mod relay;
pub mod sfu;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A service (`cascade <subcommand>`, this same binary) in a child process,
/// so it has its own CPU and memory accounting in `/proc`. Stopped with
/// SIGTERM when dropped.
pub struct ChildService {
    child: Child,
    /// The address it logged when it bound.
    pub addr: String,
    /// The whole log event that said it was ready (JSON).
    pub ready: serde_json::Value,
    /// Already reaped (killed).
    exited: bool,
}

impl ChildService {
    /// Starts `cascade <subcommand>` with `env` on top of JSON logs filtered
    /// by `log_filter`, and waits for the log line `ready_message`, whose
    /// field `addr_field` is its address.
    pub fn spawn(
        subcommand: &str,
        log_filter: &str,
        env: &[(String, String)],
        ready_message: &str,
        addr_field: &str,
    ) -> ChildService {
        let exe = std::env::current_exe().expect("current executable");
        Self::spawn_exe(
            &exe,
            &[subcommand],
            log_filter,
            env,
            ready_message,
            addr_field,
        )
    }

    /// [`ChildService::spawn`] of another executable (a test's
    /// `CARGO_BIN_EXE_cascade`) with `args`.
    pub fn spawn_exe(
        exe: &std::path::Path,
        args: &[&str],
        log_filter: &str,
        env: &[(String, String)],
        ready_message: &str,
        addr_field: &str,
    ) -> ChildService {
        let subcommand = args.first().copied().unwrap_or_default();
        let mut child = Command::new(exe)
            .args(args)
            .env("CASCADE_TELEMETRY__LOG_FORMAT", "json")
            .env("CASCADE_TELEMETRY__LOG_FILTER", log_filter)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a child service");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let (addr, ready) = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{subcommand} exited before binding"))
                .expect("read its log");
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == ready_message
            {
                let addr = event[addr_field]
                    .as_str()
                    .expect("address in the ready line")
                    .to_owned();
                break (addr, event);
            }
            // Anything else it says before binding (a config error) is shown.
            if !line.starts_with('{') {
                eprintln!("{subcommand}: {line}");
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        ChildService {
            child,
            addr,
            ready,
            exited: false,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for it to exit (after a signal the caller sent);
    /// its exit code, or `None` if it did not exit in time (it is then
    /// killed) or died by a signal.
    pub fn wait_exit(mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = true;
                    return status.code();
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.exited = true;
                    return None;
                }
            }
        }
    }

    /// Kills it with SIGKILL (a crash: nothing is closed cleanly).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Resident memory (bytes) and CPU time used so far (user + system,
/// seconds) of process `pid`.
pub fn proc_stat(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (rss_kib * 1024, cpu_secs(&format!("/proc/{pid}/stat")))
}

/// User + system CPU seconds of a `/proc/.../stat` file (0 if unreadable).
pub fn cpu_secs(stat_path: &str) -> f64 {
    edge_node::worker::proc_cpu_secs(stat_path).unwrap_or(0.0)
}

/// One measured workload.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Operations completed successfully.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the measurement.
    pub elapsed: Duration,
    /// Latency percentiles (p50, p90, p99) and maximum.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest operation.
    pub max: Duration,
}

impl Measurement {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// From per-operation latencies.
    pub fn from_samples(
        name: &str,
        mut samples: Vec<Duration>,
        errors: u64,
        elapsed: Duration,
    ) -> Self {
        samples.sort_unstable();
        let pick = |q: f64| {
            if samples.is_empty() {
                Duration::ZERO
            } else {
                let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
                samples[index]
            }
        };
        Measurement {
            name: name.to_owned(),
            ops: samples.len() as u64,
            errors,
            elapsed,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// A Markdown table of `rows`.
pub fn markdown(rows: &[Measurement]) -> String {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    let mut out = String::from(
        "| workload | ops/s | ops | errors | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            m.name,
            m.rate(),
            m.ops,
            m.errors,
            ms(m.p50),
            ms(m.p90),
            ms(m.p99),
            ms(m.max)
        ));
    }
    out
}

/// Runs `workers` copies of `op` concurrently for `duration`; each call
/// returns whether it succeeded. Latency is measured around each call.
pub async fn closed_loop<F, Fut>(
    name: &str,
    workers: usize,
    duration: Duration,
    op: F,
) -> Measurement
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(worker, i).await {
                    samples.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((s, e)) = task.await {
            samples.extend(s);
            errors += e;
        }
    }
    Measurement::from_samples(name, samples, errors, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let m = Measurement::from_samples("x", samples, 2, Duration::from_secs(2));
        assert_eq!(m.ops, 100);
        assert_eq!(m.p50, Duration::from_millis(51));
        assert_eq!(m.p99, Duration::from_millis(99));
        assert_eq!(m.max, Duration::from_millis(100));
        assert!((m.rate() - 50.0).abs() < 1e-9);
        assert!(markdown(&[m]).contains("| x | 50 | 100 | 2 |"));
    }
}
