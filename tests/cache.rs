//! The shared cache: hits after restarts, crash safety of snapshot writes, and the CLI commands.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use steadytext::cache::{embedding_key, Cache, Stored};
use steadytext::config::CacheConfig;

use common::Daemon;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_restarted_daemon_answers_from_its_snapshot() {
    let state = tempfile::tempdir().unwrap();
    let prompt = json!({"prompt": "Name three rivers.", "max_new_tokens": 16});
    let (fresh, vector) = {
        let mut d = Daemon::socket_activated_in(tempfile::tempdir().unwrap(), state.path(), "", &[]);
        let mut c = d.connect();
        let fresh = c.call("generate", prompt.clone())["result"].clone();
        assert_eq!(fresh["cached"], false);
        let vector = c.call("embed", json!({"texts": ["keep me"]}))["result"]["embeddings"][0].clone();
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(LONG), Some(0));
        assert!(d.log().contains("cache snapshot written"), "{}", d.log());
        (fresh, vector)
    };
    let d = Daemon::socket_activated_in(tempfile::tempdir().unwrap(), state.path(), "", &[]);
    let mut c = d.connect();
    let again = c.call("generate", prompt.clone())["result"].clone();
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["text"], fresh["text"]);
    assert_eq!(again["token_ids"], fresh["token_ids"]);
    // A cached generation asked for as a stream gives the same bytes as a fresh one.
    let streamed = c.call("generate_stream", prompt);
    let pieces: String = streamed["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(pieces, fresh["text"].as_str().unwrap());
    assert_eq!(c.call("embed", json!({"texts": ["keep me"]}))["result"]["embeddings"][0], vector);
    let stats = c.call("cache.stats", json!({}))["result"].clone();
    assert_eq!(stats["generation"]["hits"], 2, "{stats}");
    assert_eq!(stats["embedding"]["hits"], 1, "{stats}");
    assert!(stats["last_snapshot"]["bytes"].as_u64().unwrap() > 0);

    // stctl cache commands through the daemon.
    let stctl = |args: &[&str]| {
        let out = common::command(env!("CARGO_BIN_EXE_stctl"))
            .arg("--daemon-only")
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(stctl(&["cache", "stats"]).contains("generation  1 entries"));
    assert!(stctl(&["cache", "snapshot"]).contains("\"bytes\""));
    stctl(&["cache", "clear", "generation"]);
    assert_eq!(
        c.call("generate", json!({"prompt": "Name three rivers.", "max_new_tokens": 16}))["result"]["cached"],
        false
    );
    assert_eq!(
        c.call("cache.clear", json!({"cache": "bogus"}))["error"]["code"],
        steadytext::protocol::codes::INVALID_PARAMS
    );
}

#[test]
fn direct_mode_uses_a_per_user_cache() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = common::command(env!("CARGO_BIN_EXE_stctl"))
            .arg("--no-daemon")
            .args(args)
            .env("XDG_CACHE_HOME", home.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run(&["generate", "Say something.", "--max-new-tokens", "8", "--json"]);
    let second = run(&["generate", "Say something.", "--max-new-tokens", "8", "--json"]);
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&first).unwrap(), serde_json::from_str(&second).unwrap());
    assert_eq!((a["cached"].clone(), b["cached"].clone()), (json!(false), json!(true)));
    assert_eq!(a["text"], b["text"]);
    assert!(home.path().join("steadytext").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".snapshot")));
    assert!(run(&["cache", "stats"]).contains("generation  1 entries"));
}

/// The engine of this build and machine, as the daemon computes it.
fn engine() -> steadytext::engine::fingerprint::Fingerprint {
    steadytext::engine::fingerprint::fingerprint(&steadytext::config::Config::default()).unwrap()
}

/// The value a crash-test writer stores under a key: checkable without the writer.
fn vector_for(i: u32) -> Vec<f32> {
    (0..64).map(|j| (i * 64 + j) as f32).collect()
}

/// Child process of `snapshots_survive_sigkill`: writes snapshots as fast as it can.
#[test]
fn snapshot_writer_child() {
    let Some(dir) = std::env::var_os("STEADYTEXT_SNAPSHOT_WRITER") else { return };
    let config = CacheConfig { embedding_capacity: 100_000, ..Default::default() };
    let mut cache = Cache::new(&config, Some(Path::new(&dir).to_path_buf()), engine());
    let digest: Arc<str> = Arc::from("sha256:test");
    for i in 0u32.. {
        cache.put_embedding(
            embedding_key(&digest, &i.to_string()),
            Stored { model_digest: digest.clone(), value: vector_for(i) },
        );
        if i % 50 == 0 {
            cache.snapshot().unwrap();
        }
    }
}

#[test]
fn snapshots_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut loaded_any = 0;
    for round in 0..200 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "snapshot_writer_child", "--nocapture", "--test-threads=1"])
            .env("STEADYTEXT_SNAPSHOT_WRITER", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(2_000 + seed % 40_000));
        child.kill().unwrap(); // SIGKILL, at a random moment of the write loop
        child.wait().unwrap();

        // Whatever the moment, the newest valid snapshot loads and holds only right answers.
        let mut cache = Cache::new(
            &CacheConfig { embedding_capacity: 100_000, ..Default::default() },
            Some(dir.path().to_path_buf()),
            engine(),
        );
        let n = cache.load();
        if n > 0 {
            loaded_any += 1;
        }
        for i in 0..n as u32 {
            let got = cache.get_embedding(&embedding_key("sha256:test", &i.to_string()));
            assert_eq!(got, Some(vector_for(i)), "round {round}: entry {i} of {n} wrong or missing");
        }
        let rejected = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("rejected"))
            .count();
        assert_eq!(rejected, 0, "round {round}: a snapshot was damaged by a kill");
    }
    assert!(loaded_any > 100, "the writer rarely got a snapshot out: {loaded_any}");
}

#[test]
fn a_killed_daemon_restarts_and_serves_right_answers() {
    let state = tempfile::tempdir().unwrap();
    let config = "[cache]\nsnapshot_interval_secs = 1\n";
    let mut expected = None;
    for round in 0..3 {
        let mut d = Daemon::socket_activated_in(tempfile::tempdir().unwrap(), state.path(), config, &[]);
        let mut c = d.connect();
        let r = c.call("generate", json!({"prompt": "Describe a cat.", "max_new_tokens": 12}))["result"].clone();
        let text = r["text"].clone();
        assert_eq!(*expected.get_or_insert(text.clone()), text, "round {round}");
        for i in 0..20 {
            c.call("embed", json!({"texts": [format!("text {round} {i}")]}));
        }
        std::thread::sleep(Duration::from_millis(900 + round * 150));
        d.child.kill().unwrap(); // SIGKILL, likely while a snapshot is written
        d.wait_exit(LONG);
    }
}
