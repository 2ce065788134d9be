//! Typed results of `status` and `cache.stats`: the daemon fills them, Prometheus text, the
//! systemd status line and `stctl` read their fields (a renamed field is a compile error).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which kind of model a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Text generation.
    Generation,
    /// Embeddings.
    Embedding,
}

impl ModelKind {
    /// Lower-case name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Generation => "generation",
            ModelKind::Embedding => "embedding",
        }
    }
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Protocol version.
    pub protocol: u32,
    /// Process id.
    pub pid: u32,
    /// Loaded models.
    pub models: Vec<ModelStatus>,
    /// Counters and latencies.
    pub metrics: MetricsSnapshot,
    /// Cache figures (None when the cache is off).
    pub cache: Option<CacheStats>,
}

/// One loaded model in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Generation or embedding.
    pub kind: ModelKind,
    /// Folder name.
    pub name: String,
    /// `sha256:...` digest.
    pub digest: String,
    /// Folder it was loaded from.
    pub dir: PathBuf,
    /// Jobs waiting or running.
    pub queue_depth: usize,
    /// Requests merged into another request's model run.
    pub merged_requests: u64,
}

/// The daemon's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Requests served, by method.
    pub requests: BTreeMap<String, u64>,
    /// Requests served in all.
    pub requests_total: u64,
    /// Requests answered with an error.
    pub errors_total: u64,
    /// Requests refused because a queue was full.
    pub overloaded_total: u64,
    /// Open connections.
    pub connections: usize,
    /// Requests being served.
    pub in_flight: usize,
    /// Latency percentiles over recent requests.
    pub latency_ms: Latency,
    /// Resident set size.
    pub rss_bytes: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Requests the percentiles are computed over.
    pub samples: usize,
}

/// Result of `cache.stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    /// The generation cache.
    pub generation: CacheKindStats,
    /// The embedding cache.
    pub embedding: CacheKindStats,
    /// Snapshot folder.
    pub dir: Option<PathBuf>,
    /// The last snapshot written or loaded.
    pub last_snapshot: Option<SnapshotInfo>,
}

/// Figures of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CacheKindStats {
    /// Entries held.
    pub entries: usize,
    /// Bytes charged.
    pub bytes: usize,
    /// Lookups that hit.
    pub hits: u64,
    /// Lookups that missed.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
    /// hits / (hits + misses), 0 before any lookup.
    pub hit_rate: f64,
}

/// Facts about a snapshot file (result of `cache.snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// File path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Creation time, ms since the epoch.
    pub created_unix_ms: u64,
}
