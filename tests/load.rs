//! Load with hostile clients: 64 honest clients of mixed methods beside a long streamed
//! generation, first read by its client, then (other phase) never read, with 200 idle
//! connections open too. Every answer must be exact, the honest clients' p99 latency must stay
//! within 2x, the watchdog must keep being pinged, RSS must stay bounded. Each phase runs
//! `STEADYTEXT_LOAD_SECS` seconds (default 12). Both phases have the long generation, so the
//! comparison measures what not reading (and idling) costs the others, not the CPU a
//! generation takes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};
use steadytext::core::validate::ToRequest;
use steadytext::protocol::{EmbedParams, GenerateParams};
use steadytext::service::{EmbeddingService, GenerationService};

const CLIENTS: usize = 64;
const CONFIG: &str = "[daemon]\nmax_connections = 512\nmax_connections_per_peer = 400\nqueue_depth = 256\n\
                      send_timeout_secs = 5\n[limits]\nmax_new_tokens = 4096\n";

/// A request and the exact result it must get (without the `cached` flag).
struct Case {
    method: &'static str,
    params: Value,
    expected: Value,
}

fn cases() -> Vec<Case> {
    let config = common::config(0);
    let mut generator = GenerationService::load(&config, None).unwrap();
    let mut embedder = EmbeddingService::load(&config, None).unwrap();
    let mut cases = Vec::new();
    for i in 0..8 {
        let params = json!({"prompt": format!("Give me fact number {i} about mountains."), "max_new_tokens": 8});
        let p: GenerateParams = serde_json::from_value(params.clone()).unwrap();
        let mut expected =
            serde_json::to_value(generator.run(&p.to_request(&config).unwrap(), &mut |_| true).unwrap()).unwrap();
        common::without_cache_fields(&mut expected);
        cases.push(Case { method: "generate", params, expected });
    }
    for i in 0..48 {
        let params = json!({"texts": [format!("load sentence {i}"), format!("another one, number {}", i * 7)]});
        let p: EmbedParams = serde_json::from_value(params.clone()).unwrap();
        let mut expected = serde_json::to_value(embedder.run(&p.texts).unwrap()).unwrap();
        common::without_cache_fields(&mut expected);
        cases.push(Case { method: "embed", params, expected });
    }
    cases
}

/// Runs the honest clients for `secs`; returns (latencies in ms, wrong answers, answers).
fn honest_load(d: &Arc<Daemon>, cases: &Arc<Vec<Case>>, secs: u64) -> (Vec<f64>, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (d, cases) = (d.clone(), cases.clone());
            std::thread::spawn(move || {
                let mut conn = d.connect();
                let (mut latencies, mut wrong, mut n) = (Vec::new(), 0, client * 7);
                while Instant::now() < deadline {
                    n += 1;
                    let started = Instant::now();
                    let (method, params, expected) = match n % 10 {
                        0 => ("ping", json!({}), None),
                        1 => ("status", json!({}), None),
                        _ => {
                            let case = &cases[n % cases.len()];
                            (case.method, case.params.clone(), Some(&case.expected))
                        }
                    };
                    let mut answer = conn.call(method, params);
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                    let ok = match expected {
                        Some(want) => {
                            common::without_cache_fields(&mut answer["result"]);
                            &answer["result"] == want
                        }
                        None => answer["error"].is_null(),
                    };
                    wrong += usize::from(!ok);
                }
                (latencies, wrong)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut wrong = 0;
    for h in handles {
        let (l, w) = h.join().unwrap();
        all.extend(l);
        wrong += w;
    }
    let answers = all.len();
    all.sort_by(f64::total_cmp);
    (all, wrong, answers)
}

fn p(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn honest_clients_keep_their_latency_beside_hostile_ones() {
    let secs: u64 = std::env::var("STEADYTEXT_LOAD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let d = Arc::new(Daemon::socket_activated(CONFIG, &[("WATCHDOG_USEC", "2000000")]));
    let cases = Arc::new(cases());
    // Warm up: every generation once (later ones come from the cache, as repeated requests do).
    for case in cases.iter().filter(|c| c.method == "generate") {
        d.connect().call(case.method, case.params.clone());
    }
    let rss = |d: &Daemon| d.connect().call("status", json!({}))["result"]["metrics"]["rss_bytes"].as_u64().unwrap();
    // About one phase of generation on this machine class.
    let long = json!(secs * 60);
    let reader = {
        let d = d.clone();
        let params = json!({"prompt": "Write a very long story about the mountains.", "max_new_tokens": long});
        std::thread::spawn(move || d.connect().call("generate_stream", params))
    };
    let (quiet, wrong_quiet, n_quiet) = honest_load(&d, &cases, secs);
    assert!(reader.join().unwrap()["error"].is_null());

    // Hostile clients: 200 idle connections and a stream nobody reads.
    let idle: Vec<_> = (0..200).map(|_| d.connect()).collect();
    let mut stalled = d.connect();
    stalled
        .send("generate_stream", json!({"prompt": "Write a very long story about the sea.", "max_new_tokens": long}));
    let watchdog_before = d.notify.messages().iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let (hostile, wrong_hostile, n_hostile) = honest_load(&d, &cases, secs);
    let watchdog_pings = d.notify.messages().iter().filter(|m| m.contains("WATCHDOG=1")).count() - watchdog_before;
    let rss_after = rss(&d);

    eprintln!(
        "quiet: {n_quiet} answers, p50 {:.2} ms, p99 {:.2} ms; with 200 idle + a stalled stream: {n_hostile} answers, \
         p50 {:.2} ms, p99 {:.2} ms; wrong {wrong_quiet}/{wrong_hostile}; watchdog pings {watchdog_pings} in {secs} s; \
         RSS {} MiB",
        p(&quiet, 0.5),
        p(&quiet, 0.99),
        p(&hostile, 0.5),
        p(&hostile, 0.99),
        rss_after >> 20
    );
    assert_eq!((wrong_quiet, wrong_hostile), (0, 0), "wrong answers");
    assert!(p(&hostile, 0.99) <= 2.0 * p(&quiet, 0.99).max(1.0), "p99 more than doubled beside hostile clients");
    assert!(watchdog_pings as u64 >= secs / 2, "the watchdog was not pinged ({watchdog_pings} in {secs} s)");
    assert!(rss_after < 1 << 30, "RSS {} MiB", rss_after >> 20);
    assert!(d.log().matches("model loaded").count() <= 2, "the daemon restarted");
    drop(idle);
}
