//! What `stctl status` and `stctl cache stats` print for people (the JSON forms print the typed
//! results as they are).

use std::fmt::Write as _;

use crate::protocol::{CacheStats, Status};

/// Renders a `status` result for people (`stctl status`).
pub fn render_status(status: &Status) -> String {
    let m = &status.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "steadytextd {} (protocol {}), pid {}", status.version, status.protocol, status.pid);
    let _ = writeln!(out, "uptime:      {:.0} s", m.uptime_seconds);
    for model in &status.models {
        let _ = writeln!(
            out,
            "model:       {} {} ({}, queue {}, idle {:.0} s)",
            model.kind.as_str(),
            model.name,
            model.digest,
            model.queue_depth,
            model.idle_seconds
        );
        match &model.prefix_cache {
            Some(p) if p.enabled => {
                let _ = writeln!(
                    out,
                    "  prefixes:  {} hits, {} misses, {} tokens reused, {} prefilled, {:.1} of {:.0} MiB, {} evictions",
                    p.hits,
                    p.misses,
                    p.tokens_reused,
                    p.tokens_prefilled,
                    p.bytes as f64 / 1048576.0,
                    p.budget_bytes as f64 / 1048576.0,
                    p.evictions
                );
            }
            Some(p) => {
                let _ = writeln!(out, "  prefixes:  not cached: {}", p.off_reason.as_deref().unwrap_or("off"));
            }
            None => {}
        }
    }
    if !status.engine_fingerprint.is_empty() {
        let _ = writeln!(out, "engine:      {} ({})", status.engine_fingerprint, status.engine);
    }
    for missing in &status.unavailable {
        let _ = writeln!(out, "unavailable: {} {}: {}", missing.kind.as_str(), missing.name, missing.reason);
    }
    let _ = writeln!(
        out,
        "requests:    {} ({} errors, {} overloaded)",
        m.requests_total, m.errors_total, m.overloaded_total
    );
    let _ = writeln!(out, "in flight:   {} on {} connections", m.in_flight, m.connections);
    let l = &m.latency_ms;
    let _ = writeln!(out, "latency:     p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms", l.p50, l.p90, l.p99);
    let _ = writeln!(out, "memory:      {:.1} MiB resident", m.rss_bytes as f64 / 1048576.0);
    out
}

/// Renders cache figures for people, saying which `mode` (daemon, direct) they are from.
pub fn render_cache_stats(s: &CacheStats, mode: &str) -> String {
    let dir = s.dir.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default();
    let mut out = format!("cache ({mode}){dir}\n");
    for (kind, c) in [("generation", &s.generation), ("embedding", &s.embedding)] {
        out.push_str(&format!(
            "{kind:<11} {} entries, {:.1} KiB, {} hits, {} misses, hit rate {:.1}%, {} evictions\n",
            c.entries,
            c.bytes as f64 / 1024.0,
            c.hits,
            c.misses,
            c.hit_rate * 100.0,
            c.evictions
        ));
    }
    match &s.last_snapshot {
        Some(snap) => out.push_str(&format!(
            "snapshot    {} ({} bytes, created {} ms after the epoch)\n",
            snap.path.display(),
            snap.bytes,
            snap.created_unix_ms
        )),
        None => out.push_str("snapshot    none yet\n"),
    }
    out
}
