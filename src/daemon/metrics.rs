//! Counters and latency percentiles of the daemon, as the `status` JSON and Prometheus text.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Latencies kept for percentiles.
const WINDOW: usize = 4096;

/// Shared counters; cheap to update from any task.
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<String, u64>>,
    errors: AtomicU64,
    overloads: AtomicU64,
    latencies_ms: Mutex<VecDeque<f64>>,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Requests being served.
    pub in_flight: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            errors: AtomicU64::new(0),
            overloads: AtomicU64::new(0),
            latencies_ms: Mutex::default(),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// Resident set size of this process in bytes, from /proc.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, method: &str, elapsed: Duration, ok: bool) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(method.to_string()).or_default() += 1;
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut lat = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if lat.len() == WINDOW {
            lat.pop_front();
        }
        lat.push_back(elapsed.as_secs_f64() * 1e3);
    }

    /// Records a request refused for overload.
    pub fn record_overload(&self) {
        self.overloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Mean latency of recent requests, for retry hints.
    pub fn mean_latency_ms(&self) -> f64 {
        let lat = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if lat.is_empty() {
            return 100.0;
        }
        lat.iter().sum::<f64>() / lat.len() as f64
    }

    /// The counters as JSON (part of `status`).
    pub fn snapshot(&self) -> Value {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut lat: Vec<f64> = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        json!({
            "uptime_seconds": self.uptime().as_secs_f64(),
            "requests": requests,
            "requests_total": requests.values().sum::<u64>(),
            "errors_total": self.errors.load(Ordering::Relaxed),
            "overloaded_total": self.overloads.load(Ordering::Relaxed),
            "connections": self.connections.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "latency_ms": {
                "p50": percentile(&lat, 50.0),
                "p90": percentile(&lat, 90.0),
                "p99": percentile(&lat, 99.0),
                "samples": lat.len(),
            },
            "rss_bytes": rss_bytes(),
        })
    }
}

/// Renders a `status` result as Prometheus text exposition format.
pub fn prometheus(status: &Value) -> String {
    let m = &status["metrics"];
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: &Value| {
        let _ = writeln!(
            out,
            "# HELP steadytext_{name} {help}\n# TYPE steadytext_{name} {kind}\nsteadytext_{name} {}",
            value.as_f64().unwrap_or(0.0)
        );
    };
    gauge("uptime_seconds", "Seconds since the daemon started.", "gauge", &m["uptime_seconds"]);
    gauge("errors_total", "Requests answered with an error.", "counter", &m["errors_total"]);
    gauge("overloaded_total", "Requests refused because a queue was full.", "counter", &m["overloaded_total"]);
    gauge("connections", "Open client connections.", "gauge", &m["connections"]);
    gauge("in_flight", "Requests being served.", "gauge", &m["in_flight"]);
    gauge("resident_memory_bytes", "Resident set size.", "gauge", &m["rss_bytes"]);
    let _ = writeln!(
        out,
        "# HELP steadytext_requests_total Requests served, by method.\n# TYPE steadytext_requests_total counter"
    );
    if let Some(map) = m["requests"].as_object() {
        for (method, n) in map {
            let _ = writeln!(out, "steadytext_requests_total{{method=\"{method}\"}} {}", n.as_u64().unwrap_or(0));
        }
    }
    let _ = writeln!(out, "# HELP steadytext_request_duration_seconds Request latency over recent requests.\n# TYPE steadytext_request_duration_seconds summary");
    for q in ["p50", "p90", "p99"] {
        let quantile = format!("0.{}", &q[1..]);
        let secs = m["latency_ms"][q].as_f64().unwrap_or(0.0) / 1e3;
        let _ = writeln!(out, "steadytext_request_duration_seconds{{quantile=\"{quantile}\"}} {secs}");
    }
    let _ =
        writeln!(out, "# HELP steadytext_queue_depth Requests waiting, by model.\n# TYPE steadytext_queue_depth gauge");
    if let Some(models) = status["models"].as_array() {
        for model in models {
            let _ = writeln!(
                out,
                "steadytext_queue_depth{{model=\"{}\",kind=\"{}\"}} {}",
                model["name"].as_str().unwrap_or(""),
                model["kind"].as_str().unwrap_or(""),
                model["queue_depth"].as_u64().unwrap_or(0)
            );
        }
    }
    out
}

/// Renders a `status` result for people (`stctl status`).
pub fn render_text(status: &Value) -> String {
    let m = &status["metrics"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "steadytextd {} (protocol {}), pid {}",
        status["version"].as_str().unwrap_or("?"),
        status["protocol"],
        status["pid"]
    );
    let _ = writeln!(out, "uptime:      {:.0} s", m["uptime_seconds"].as_f64().unwrap_or(0.0));
    if let Some(models) = status["models"].as_array() {
        for model in models {
            let _ = writeln!(
                out,
                "model:       {} {} ({}, queue {})",
                model["kind"].as_str().unwrap_or(""),
                model["name"].as_str().unwrap_or(""),
                model["digest"].as_str().unwrap_or(""),
                model["queue_depth"]
            );
        }
    }
    let _ = writeln!(
        out,
        "requests:    {} ({} errors, {} overloaded)",
        m["requests_total"], m["errors_total"], m["overloaded_total"]
    );
    let _ = writeln!(out, "in flight:   {} on {} connections", m["in_flight"], m["connections"]);
    let l = &m["latency_ms"];
    let _ = writeln!(
        out,
        "latency:     p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(out, "memory:      {:.1} MiB resident", m["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
    out
}
