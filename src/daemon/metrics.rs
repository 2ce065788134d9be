//! Counters and latency percentiles of the daemon, rendered from the typed [`Status`] as
//! Prometheus text and as `stctl status` text.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::{
    Histogram, Latency, Method, MetricsSnapshot, ModelStatus, PrefixCacheStatus, Status, HISTOGRAM_BOUNDS,
};

/// Latencies kept for percentiles.
const WINDOW: usize = 4096;

/// Name under which requests for unknown methods are counted (client-chosen names are never
/// kept, so they cannot grow the daemon's memory).
const OTHER_METHOD: &str = "(unknown)";

/// A histogram that threads update without locks.
struct AtomicHistogram {
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_micros: AtomicU64::new(0) }
    }
}

impl AtomicHistogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = HISTOGRAM_BOUNDS.iter().position(|&bound| secs <= bound).unwrap_or(HISTOGRAM_BOUNDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count = buckets.iter().sum();
        Histogram { buckets, sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count }
    }
}

/// Shared counters; cheap to update from any task.
pub(crate) struct Metrics {
    started: Instant,
    /// Per method of [`Method::ALL`], then one for unknown methods.
    requests: Vec<AtomicU64>,
    /// Durations, per method as `requests`.
    durations: Vec<AtomicHistogram>,
    first_piece: AtomicHistogram,
    tokens_generated: AtomicU64,
    requests_total: AtomicU64,
    errors: AtomicU64,
    overloads: AtomicU64,
    latencies_ms: Mutex<VecDeque<f64>>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: (0..=Method::ALL.len()).map(|_| AtomicU64::new(0)).collect(),
            durations: (0..=Method::ALL.len()).map(|_| AtomicHistogram::default()).collect(),
            first_piece: AtomicHistogram::default(),
            tokens_generated: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
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

/// Adds one to a gauge for as long as the guard lives.
pub(crate) struct GaugeGuard<'a>(&'a AtomicUsize);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn hold(gauge: &AtomicUsize) -> GaugeGuard<'_> {
    gauge.fetch_add(1, Ordering::Relaxed);
    GaugeGuard(gauge)
}

impl Metrics {
    /// Records one finished request (of no known method: None).
    pub(crate) fn record(&self, method: Option<Method>, elapsed: Duration, ok: bool) {
        let slot = method.and_then(|m| Method::ALL.iter().position(|&k| k == m)).unwrap_or(Method::ALL.len());
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
        self.durations[slot].observe(elapsed);
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut lat = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if lat.len() == WINDOW {
            lat.pop_front();
        }
        lat.push_back(elapsed.as_secs_f64() * 1e3);
    }

    /// A streamed generation sent its first piece `elapsed` after it arrived.
    pub(crate) fn record_first_piece(&self, elapsed: Duration) {
        self.first_piece.observe(elapsed);
    }

    /// The models generated `tokens` tokens for one request.
    pub(crate) fn record_tokens(&self, tokens: usize) {
        self.tokens_generated.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// Records a request refused for overload.
    pub(crate) fn record_overload(&self) {
        self.overloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an open connection while the guard lives.
    pub(crate) fn connection(&self) -> GaugeGuard<'_> {
        hold(&self.connections)
    }

    /// Counts a request in flight while the guard lives.
    pub(crate) fn request(&self) -> GaugeGuard<'_> {
        hold(&self.in_flight)
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests being served.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests served since start.
    pub(crate) fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Mean latency of recent requests, for retry hints.
    pub(crate) fn mean_latency_ms(&self) -> f64 {
        let lat = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if lat.is_empty() {
            return 100.0;
        }
        lat.iter().sum::<f64>() / lat.len() as f64
    }

    /// The counters (part of `status`).
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let names = Method::ALL.map(Method::name).into_iter().chain([OTHER_METHOD]);
        let requests: BTreeMap<String, u64> = names
            .zip(&self.requests)
            .map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut lat: Vec<f64> = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        MetricsSnapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            requests,
            requests_total: self.requests_total(),
            errors_total: self.errors.load(Ordering::Relaxed),
            overloaded_total: self.overloads.load(Ordering::Relaxed),
            connections: self.connections(),
            in_flight: self.in_flight(),
            latency_ms: Latency {
                p50: percentile(&lat, 50.0),
                p90: percentile(&lat, 90.0),
                p99: percentile(&lat, 99.0),
                samples: lat.len(),
            },
            rss_bytes: rss_bytes(),
            durations: Method::ALL
                .map(Method::name)
                .into_iter()
                .chain([OTHER_METHOD])
                .zip(&self.durations)
                .map(|(name, h)| (name.to_string(), h.snapshot()))
                .filter(|(_, h)| h.count > 0)
                .collect(),
            first_piece: self.first_piece.snapshot(),
            tokens_generated_total: self.tokens_generated.load(Ordering::Relaxed),
        }
    }
}

/// Writes one histogram's `_bucket` (cumulative), `_sum` and `_count` lines; `labels` ends
/// with a comma when not empty.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    let bounds = HISTOGRAM_BOUNDS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]);
    for (i, bound) in bounds.enumerate() {
        cumulative += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "steadytext_{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    let labels = labels.trim_end_matches(',');
    let _ = writeln!(out, "steadytext_{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "steadytext_{name}_count{{{labels}}} {}", h.count);
}

/// Renders a `status` result as Prometheus text exposition format.
pub fn prometheus(status: &Status) -> String {
    let m = &status.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP steadytext_{name} {help}\n# TYPE steadytext_{name} {kind}\nsteadytext_{name} {value}"
        );
    };
    metric("uptime_seconds", "Seconds since the daemon started.", "gauge", m.uptime_seconds);
    metric("errors_total", "Requests answered with an error.", "counter", m.errors_total as f64);
    metric("overloaded_total", "Requests refused because a queue was full.", "counter", m.overloaded_total as f64);
    metric("connections", "Open client connections.", "gauge", m.connections as f64);
    metric("in_flight", "Requests being served.", "gauge", m.in_flight as f64);
    metric("resident_memory_bytes", "Resident set size.", "gauge", m.rss_bytes as f64);
    metric(
        "tokens_generated_total",
        "Tokens generated by the models (cache hits not counted).",
        "counter",
        m.tokens_generated_total as f64,
    );
    let _ = writeln!(
        out,
        "# HELP steadytext_requests_total Requests served, by method.\n# TYPE steadytext_requests_total counter"
    );
    for (method, n) in &m.requests {
        let _ = writeln!(out, "steadytext_requests_total{{method=\"{method}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP steadytext_request_duration_seconds Request durations, by method.\n# TYPE steadytext_request_duration_seconds histogram"
    );
    for (method, h) in &m.durations {
        histogram(&mut out, "request_duration_seconds", &format!("method=\"{method}\","), h);
    }
    let _ = writeln!(
        out,
        "# HELP steadytext_first_piece_seconds Time from a streamed generation's arrival to its first piece.\n# TYPE steadytext_first_piece_seconds histogram"
    );
    histogram(&mut out, "first_piece_seconds", "", &m.first_piece);
    if let Some(cache) = &status.cache {
        let caches = [("generation", &cache.generation), ("embedding", &cache.embedding)];
        let _ = writeln!(
            out,
            "# HELP steadytext_cache_hits_total Cache lookups that hit.\n# TYPE steadytext_cache_hits_total counter"
        );
        for (kind, stats) in caches {
            let _ = writeln!(out, "steadytext_cache_hits_total{{cache=\"{kind}\"}} {}", stats.hits);
        }
        let _ = writeln!(
            out,
            "# HELP steadytext_cache_misses_total Cache lookups that missed.\n# TYPE steadytext_cache_misses_total counter"
        );
        for (kind, stats) in caches {
            let _ = writeln!(out, "steadytext_cache_misses_total{{cache=\"{kind}\"}} {}", stats.misses);
        }
    }
    let gauge = "gauge";
    model_metric(&mut out, status, "queue_depth", "Requests waiting, by model.", gauge, |m| Some(m.queue_depth as f64));
    let idle = "Seconds since a request last asked for the model.";
    model_metric(&mut out, status, "model_idle_seconds", idle, gauge, |m| Some(m.idle_seconds));
    let prefix: [PrefixMetric; 6] = [
        ("prefix_cache_hits_total", "Prompts that took a cached prefix.", "counter", |p| p.hits),
        ("prefix_cache_misses_total", "Prompts that found no cached prefix.", "counter", |p| p.misses),
        ("prefix_cache_tokens_reused_total", "Prompt tokens whose KV came from the prefix cache.", "counter", |p| {
            p.tokens_reused
        }),
        ("prefix_cache_tokens_prefilled_total", "Prompt tokens prefilled by the model.", "counter", |p| {
            p.tokens_prefilled
        }),
        ("prefix_cache_bytes", "Bytes of prompt-prefix KV held.", gauge, |p| p.bytes),
        ("prefix_cache_evictions_total", "Prefix cache blocks dropped to stay within the budget.", "counter", |p| {
            p.evictions
        }),
    ];
    for (name, help, kind, value) in prefix {
        model_metric(&mut out, status, name, help, kind, |m| m.prefix_cache.as_ref().map(|p| value(p) as f64));
    }
    out
}

/// A prefix cache figure as a metric: name, help, type and its value.
type PrefixMetric = (&'static str, &'static str, &'static str, fn(&PrefixCacheStatus) -> u64);

/// One metric per loaded model that has it, labelled with its name and kind.
fn model_metric(
    out: &mut String,
    status: &Status,
    name: &str,
    help: &str,
    kind: &str,
    value: impl Fn(&ModelStatus) -> Option<f64>,
) {
    let _ = writeln!(out, "# HELP steadytext_{name} {help}\n# TYPE steadytext_{name} {kind}");
    for model in &status.models {
        if let Some(value) = value(model) {
            let _ = writeln!(
                out,
                "steadytext_{name}{{model=\"{}\",kind=\"{}\"}} {value}",
                model.name,
                model.kind.as_str(),
            );
        }
    }
}
