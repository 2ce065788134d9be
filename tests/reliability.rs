//! Connection hygiene against a real daemon: per-peer caps with a refusal the client can read,
//! idle and half-sent connections closed on time, admin methods for admins only.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{command, Daemon};
use serde_json::json;
use steadytext::protocol::codes;

const CONFIG: &str = "[daemon]\nmax_connections_per_peer = 8\nidle_timeout_secs = 2\nline_timeout_secs = 1\n";

#[test]
fn idle_and_half_sent_connections_are_cut_off_and_refusals_are_readable() {
    let d = Daemon::socket_activated(CONFIG, &[]);
    // Eight idle connections take this user's share (the first one has answered a ping, so the
    // daemon is up; keeping it open means no closing connection races the count); the ninth is
    // refused with a reason.
    let mut first = d.connect();
    assert_eq!(first.call("ping", json!({}))["result"]["protocol"], 1);
    let idle: Vec<_> = std::iter::once(first).chain((1..8).map(|_| d.connect())).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = d.connect();
    let answer = refused.read();
    assert_eq!(answer["error"]["code"], codes::OVERLOADED, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_connections_per_peer"), "{answer}");
    let out = command(env!("CARGO_BIN_EXE_stctl"))
        .args(["--daemon-only", "--retries", "0", "--socket", d.socket.to_str().unwrap(), "ping"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too many connections") && !err.contains("Broken pipe"), "{err}");
    // The idle ones are closed after idle_timeout_secs; then others are served again.
    let started = Instant::now();
    for mut c in idle {
        assert!(c.read_raw().is_none(), "an idle connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(d.connect().call("ping", json!({}))["result"]["protocol"], 1);
    // A request line that is started and never finished gets an error and is closed.
    let mut half = d.connect();
    half.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":");
    let answer = half.read();
    assert_eq!(answer["error"]["code"], codes::INVALID_REQUEST, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("not finished"), "{answer}");
    assert!(half.read_raw().is_none());
}

#[test]
fn admin_methods_are_for_admins() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let d = Daemon::socket_activated("", &[]);
    // The daemon's own user (and root) may clear the cache.
    assert!(d.connect().call("cache.clear", json!({}))["error"].is_null());
    if !root {
        return; // running as another user needs root; CI runs as root
    }
    // Another user may generate but not clear everyone's cache.
    let dir = d.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| {
        command("setpriv")
            .args(["--reuid=4242", "--regid=4242", "--clear-groups", env!("CARGO_BIN_EXE_stctl"), "--daemon-only"])
            .args(["--socket", d.socket.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let ping = as_nobody(&["ping"]);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stderr));
    let clear = as_nobody(&["cache", "clear"]);
    assert!(!clear.status.success());
    let err = String::from_utf8_lossy(&clear.stderr);
    assert!(err.contains("forbidden") && err.contains("admin_group"), "{err}");
}

#[test]
fn a_huge_embed_request_does_not_leave_the_daemon_bloated() {
    let d = Daemon::socket_activated("", &[]);
    let rss = |d: &Daemon| d.connect().call("status", json!({}))["result"]["metrics"]["rss_bytes"].as_u64().unwrap();
    let mut c = d.connect();
    assert!(c.call("embed", json!({"texts": ["warm up"]}))["error"].is_null());
    let before = rss(&d);
    // 31 texts of 256 KB: the largest request line the protocol takes.
    let texts: Vec<String> = (0..31).map(|i| format!("word{i} ").repeat(256 * 1024 / 7)).collect();
    let answer = c.call("embed", json!({ "texts": texts }));
    assert!(answer["error"].is_null(), "{}", answer["error"]);
    let after = settled_rss(&d, before);
    let grown = after.saturating_sub(before) / (1 << 20);
    eprintln!("RSS {} MiB before, {} MiB after a 31 x 256 KB embed request", before >> 20, after >> 20);
    assert!(grown < 150, "RSS grew by {grown} MiB");
}

#[test]
fn identical_requests_in_flight_are_computed_once() {
    let d = std::sync::Arc::new(Daemon::socket_activated("[cache]\nenabled = false\n", &[]));
    let params = json!({"prompt": "Name three rivers.", "max_new_tokens": 24});
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (d, params) = (d.clone(), params.clone());
            std::thread::spawn(move || d.connect().call("generate", params))
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()["result"].clone()).collect();
    let fresh = answers.iter().filter(|a| a["cached"] == false).count();
    assert_eq!(fresh, 1, "one computation, the others coalesced: {answers:?}");
    assert!(answers.iter().all(|a| a["text"] == answers[0]["text"] && a["token_ids"] == answers[0]["token_ids"]));
}

#[test]
fn a_long_generation_gives_its_memory_back() {
    let d = Daemon::socket_activated("[cache]\nenabled = false\n", &[]);
    let rss = |d: &Daemon| d.connect().call("status", json!({}))["result"]["metrics"]["rss_bytes"].as_u64().unwrap();
    assert!(d.connect().call("generate", json!({"prompt": "warm up", "max_new_tokens": 4}))["error"].is_null());
    let before = rss(&d);
    let params = json!({"prompt": "Write a very long story about the sea.", "max_new_tokens": 600});
    let answer = d.connect().call("generate", params);
    assert_eq!(answer["result"]["token_ids"].as_array().map(Vec::len), Some(600), "{}", answer["error"]);
    let after = settled_rss(&d, before);
    eprintln!("RSS {} MiB before, {} MiB after a 600-token generation", before >> 20, after >> 20);
    assert!(after.saturating_sub(before) < 40 << 20, "RSS grew by {} MiB", (after - before) >> 20);
}

/// The daemon's RSS once it has given memory back (it does so right after answering): polled
/// for up to 3 s until it is within 40 MiB of `before`.
fn settled_rss(d: &Daemon, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let rss = d.connect().call("status", json!({}))["result"]["metrics"]["rss_bytes"].as_u64().unwrap();
        if rss < before + (40 << 20) || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
