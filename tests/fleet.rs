//! Three identical replicas behind the reference HAProxy configuration
//! (`packaging/haproxy/steadytext.cfg`, run as shipped with the addresses in its environment, the
//! replicas on HTTPS):
//! identical requests stay on one replica, whose cache answers the repeats; every answer is the
//! same bytes whichever replica gives it; a replica killed with SIGKILL costs no request, and the
//! other replicas' requests do not move.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{HttpDaemon, KEY};
use serde_json::{json, Value};

/// An answer through the balancer: status, the headers we look at, the body.
struct Answer {
    status: u16,
    replica: String,
    cache: String,
    route_key: String,
    body: String,
}

/// `POST path` with a JSON body (and a route key header when given) to 127.0.0.1:`port`
/// (HTTP/1.1, one request per connection).
fn post_keyed(port: u16, path: &str, body: &str, route_key: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let route = route_key.map(|k| format!("X-Steadytext-Route-Key: {k}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: fleet\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         {route}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
            .unwrap_or_default()
            .to_string()
    };
    Answer {
        status,
        replica: header("x-steadytext-replica"),
        cache: header("x-steadytext-cache"),
        route_key: header("x-steadytext-route-key"),
        body: body.into(),
    }
}

fn post(port: u16, path: &str, body: &Value) -> Answer {
    post_keyed(port, path, &body.to_string(), None)
}

fn text(a: &Answer) -> String {
    serde_json::from_str::<Value>(&a.body).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()
}

/// HAProxy running the reference configuration in the foreground.
struct Balancer {
    child: Child,
    port: u16,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Balancer {
    fn start(replicas: &[HttpDaemon], ca: &Path, log: &Path) -> Self {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/haproxy/steadytext.cfg");
        let port = common::free_port();
        let mut cmd = haproxy(ca);
        cmd.arg("-db").arg("-f").arg(&config).env("STEADYTEXT_FRONT", format!("127.0.0.1:{port}"));
        for (i, r) in replicas.iter().enumerate() {
            cmd.env(format!("STEADYTEXT_REPLICA_{}", i + 1), format!("127.0.0.1:{}", r.port));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("haproxy (package haproxy; `make setup` installs it)");
        let b = Balancer { child, port };
        // Ready when a request through it is answered (its health checks have seen the replicas).
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || post(port, "/v1/embeddings", &json!({"model": "all-MiniLM-L6-v2", "input": "up?"})).status != 200
        {
            assert!(Instant::now() < deadline, "haproxy never served: {}", std::fs::read_to_string(log).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }
}

/// `haproxy`, trusting the replicas' certificates (signed by `ca`, naming localhost).
fn haproxy(ca: &Path) -> Command {
    let mut cmd = Command::new("haproxy");
    cmd.env("STEADYTEXT_CA_FILE", ca).env("STEADYTEXT_TLS_NAME", "localhost");
    cmd
}

/// Three replicas serving HTTPS with one certificate (for localhost) signed by a test CA; the
/// folder holding `ca.pem`.
fn tls_replicas() -> (Vec<HttpDaemon>, tempfile::TempDir) {
    let (pki, config) = common::http::tls_files();
    let replicas: Vec<HttpDaemon> = (0..3).map(|_| HttpDaemon::start(&config)).collect();
    let ca = pki.path().join("ca.pem");
    for r in &replicas {
        r.health_over(&format!("https://localhost:{}", r.port), ca.to_str().unwrap());
    }
    (replicas, pki)
}

fn request(i: usize) -> Value {
    json!({"model": "SmolLM2-135M-Instruct", "prompt": format!("Fact number {i} about rivers:"),
           "max_tokens": 6})
}

#[test]
fn replicas_behind_haproxy_keep_keys_in_place_answer_alike_and_survive_a_kill() {
    let (mut replicas, pki) = tls_replicas();
    let ca = pki.path().join("ca.pem");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/haproxy/steadytext.cfg");
    let check = haproxy(&ca).arg("-c").arg("-f").arg(&config).output().unwrap();
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let log = replicas[0].dir.path().join("haproxy.log");
    let balancer = Balancer::start(&replicas, &ca, &log);

    const REQUESTS: usize = 45;
    let mut first: HashMap<usize, (String, String)> = HashMap::new(); // body text, replica
    let mut hits_per_pass = Vec::new();
    for pass in 0..3 {
        let mut hits = 0;
        for i in 0..REQUESTS {
            let a = post(balancer.port, "/v1/completions", &request(i));
            assert_eq!(a.status, 200, "pass {pass}, request {i}: {}", a.body);
            let text = text(&a);
            let (expected, replica) = first.entry(i).or_insert((text.clone(), a.replica.clone()));
            assert_eq!(&text, expected, "pass {pass}, request {i}: another replica gave other bytes");
            assert_eq!(&a.replica, replica, "pass {pass}, request {i} moved to another replica");
            hits += usize::from(a.cache == "hit");
        }
        hits_per_pass.push(hits);
    }
    assert_eq!(hits_per_pass, [0, REQUESTS, REQUESTS], "cache hits per pass");
    let replicas_used: std::collections::HashSet<&String> = first.values().map(|(_, r)| r).collect();
    assert_eq!(replicas_used.len(), 3, "the keys spread over every replica");

    // The route key: the front answers with the key of the normalized request, so other
    // spellings of a request (field order, defaults written out) get the same key; sent back as
    // a header, it keeps them on one replica, where the repeat is a cache hit.
    for i in 0..10 {
        let spellings = [
            format!(r#"{{"prompt":"Fact number {i} about rivers:","max_tokens":6,"model":"SmolLM2-135M-Instruct"}}"#),
            format!(
                r#"{{"model":"SmolLM2-135M-Instruct","temperature":0,"prompt":"Fact number {i} about rivers:","max_tokens":6}}"#
            ),
        ];
        let key = post(balancer.port, "/v1/completions", &request(i)).route_key;
        assert_eq!(key.len(), 32, "route key header: {key:?}");
        let answers: Vec<Answer> =
            spellings.iter().map(|b| post_keyed(balancer.port, "/v1/completions", b, Some(&key))).collect();
        for a in &answers {
            assert_eq!((a.status, &a.route_key), (200, &key), "{}", a.body);
            assert_eq!(text(a), first[&i].0, "request {i} spelled differently gave other bytes");
        }
        assert_eq!(answers[0].replica, answers[1].replica, "one route key, one replica");
        assert_eq!(answers[1].cache, "hit");
    }
    // stctl computes the same key for the same request and sends it (JSON-RPC over HTTP).
    let stctl = |prompt: &str| {
        let out = common::command(env!("CARGO_BIN_EXE_stctl"))
            .args(["--daemon-only", "--socket", &format!("http://127.0.0.1:{}", balancer.port)])
            .args(["generate", prompt, "--json", "--raw", "--max-new-tokens", "6", "--model", "SmolLM2-135M-Instruct"])
            .env("STEADYTEXT_API_KEY", KEY)
            .output()
            .unwrap();
        assert!(out.status.success(), "stctl: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (once, again) = (stctl("Fact number 3 about rivers:"), stctl("Fact number 3 about rivers:"));
    assert_eq!(once["text"].as_str().unwrap(), first[&3].0, "stctl through the balancer: other bytes");
    assert_eq!(again["cached"], json!(true), "stctl's repeat went to the same replica: {again}");

    // SIGKILL one replica: no request fails, answers stay the same bytes, and the requests of the
    // two others stay where they were (their caches still answer them).
    let killed = format!("replica{}", 2);
    replicas[1].child.kill().unwrap();
    replicas[1].child.wait().unwrap();
    let started = Instant::now();
    let (mut moved, mut kept_hits, mut kept) = (0, 0, 0);
    for i in 0..REQUESTS {
        let a = post(balancer.port, "/v1/completions", &request(i));
        assert_eq!(a.status, 200, "after the kill, request {i}: {}", a.body);
        let text = text(&a);
        let (expected, replica) = &first[&i];
        assert_eq!(&text, expected, "after the kill, request {i}: other bytes");
        if *replica == killed {
            moved += 1;
            assert_ne!(a.replica, killed);
        } else {
            kept += 1;
            assert_eq!(&a.replica, replica, "request {i} of a live replica moved");
            kept_hits += usize::from(a.cache == "hit");
        }
    }
    assert!(moved > 0);
    assert_eq!(kept_hits, kept, "the live replicas' requests are still cache hits");
    eprintln!(
        "fleet: {REQUESTS} requests x 3 passes, hits per pass {hits_per_pass:?}; after SIGKILL of {killed}: \
         {moved} requests moved, {kept} kept (all hits), pass took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    drop(balancer);
    replicas.clear();
}

/// A stand-in for a misconfigured replica: answers `status` on a Unix socket with `status` (a
/// real daemon's, with another engine fingerprint), and nothing else.
fn other_engine(dir: &Path, status: Value) -> std::path::PathBuf {
    use std::io::{BufRead, BufReader};
    let path = dir.join("other-engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_ok() && !line.is_empty() {
                let id = serde_json::from_str::<Value>(&line).map(|r| r["id"].clone()).unwrap_or_default();
                let _ = writeln!(&conn, "{}", json!({"jsonrpc": "2.0", "result": status, "id": id}));
            }
        }
    });
    path
}

#[test]
fn stctl_with_several_sockets_routes_by_key_fails_over_and_refuses_other_engines() {
    let mut replicas: Vec<HttpDaemon> = (0..3).map(|_| HttpDaemon::start("")).collect();
    for r in &replicas {
        r.health_until_ready();
    }
    let sockets: Vec<String> = replicas.iter().map(|r| format!("unix:{}", r.socket.display())).collect();
    // stctl over the given sockets: (exit ok, the --json answer or stderr, the endpoint that answered).
    let stctl = |sockets: &[String], extra: &[&str], prompt: &str| {
        let mut cmd = common::command(env!("CARGO_BIN_EXE_stctl"));
        for s in sockets {
            cmd.args(["--socket", s]);
        }
        let out = cmd
            .args(extra)
            .args(["-v", "generate", prompt, "--json", "--raw", "--max-new-tokens", "5"])
            .args(["--model", "SmolLM2-135M-Instruct"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let answered = stderr.lines().find_map(|l| l.strip_prefix("stctl: answered by ")).unwrap_or("").to_string();
        match out.status.success() {
            true => (serde_json::from_slice::<Value>(&out.stdout).unwrap(), answered, stderr),
            false => (Value::Null, answered, stderr),
        }
    };
    let prompts: Vec<String> = (0..12).map(|i| format!("Fleet client fact {i}:")).collect();
    let mut home = HashMap::new();
    for p in &prompts {
        let (first, at, err) = stctl(&sockets, &[], p);
        assert!(!at.is_empty(), "{err}");
        // The same request from a list in another order goes to the same endpoint: a cache hit.
        let reversed: Vec<String> = sockets.iter().rev().cloned().collect();
        let (again, at_again, _) = stctl(&reversed, &[], p);
        assert_eq!((&at_again, &again["cached"]), (&at, &json!(true)), "{p}: the repeat moved");
        assert_eq!(again["text"], first["text"]);
        home.insert(p.clone(), (at, first["text"].clone()));
    }
    let used: std::collections::HashSet<&String> = home.values().map(|(at, _)| at).collect();
    assert!(used.len() >= 2, "12 keys all went to one endpoint: {used:?}");

    // Kill the endpoint of the first prompt: its requests go on to the next endpoint with the
    // same bytes; the others' requests stay put.
    let (dead, _) = home[&prompts[0]].clone();
    let index = sockets.iter().position(|s| *s == dead).unwrap();
    replicas[index].child.kill().unwrap();
    replicas[index].child.wait().unwrap();
    for p in &prompts {
        let (answer, at, err) = stctl(&sockets, &[], p);
        let (was, text) = &home[p];
        assert_eq!(&answer["text"], text, "{p}: other bytes after the failover: {err}");
        match *was == dead {
            true => assert!(at != dead && !at.is_empty(), "{p}: {err}"),
            false => assert_eq!((&at, &answer["cached"]), (was, &json!(true)), "{p} moved"),
        }
    }

    // An endpoint whose engine differs is refused, with a warning; two against one: the
    // majority is the fleet. One against one: stctl refuses to pick.
    let status: Value = {
        let out = common::command(env!("CARGO_BIN_EXE_stctl"))
            .args(["--socket", &sockets[(index + 1) % 3], "status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ours = status["engine_fingerprint"].as_str().unwrap().to_string();
    let mut theirs = status.clone();
    theirs["engine_fingerprint"] = json!("0123456789abcdef");
    let other = format!("unix:{}", other_engine(replicas[0].dir.path(), theirs).display());
    let live: Vec<String> = (0..3).filter(|&i| i != index).map(|i| sockets[i].clone()).collect();
    let (answer, _, err) = stctl(&[live.clone(), vec![other.clone()]].concat(), &[], &prompts[1]);
    assert_eq!(answer["text"], home[&prompts[1]].1, "{err}");
    assert!(
        err.contains(&format!(
            "warning: not using {other}: its engine fingerprint 0123456789abcdef is not the fleet's {ours}"
        )),
        "{err}"
    );
    let (answer, _, err) = stctl(&[live[0].clone(), other.clone()], &[], &prompts[1]);
    assert!(answer.is_null() && err.contains("disagree on the engine fingerprint"), "{err}");
    // Pinned: only the endpoints with that fingerprint.
    let (answer, _, err) = stctl(&[live[0].clone(), other.clone()], &["--fingerprint", &ours], &prompts[1]);
    assert_eq!(answer["text"], home[&prompts[1]].1, "{err}");

    // No endpoint left: an error, unless direct mode is asked for (same engine here: same bytes).
    let gone: Vec<String> = vec![dead.clone(), format!("unix:{}/none.sock", replicas[0].dir.path().display())];
    let (answer, _, err) = stctl(&gone, &[], &prompts[0]);
    assert!(answer.is_null() && err.contains("no endpoint could answer"), "{err}");
    let (answer, _, err) = stctl(&gone, &["--fallback-direct"], &prompts[0]);
    assert_eq!((&answer["text"], &answer["mode"]), (&home[&prompts[0]].1, &json!("direct")), "{err}");
    let (answer, _, err) = stctl(&gone, &["--fallback-direct", "--fingerprint", "0123456789abcdef"], &prompts[0]);
    assert!(answer.is_null() && err.contains("direct mode's engine fingerprint"), "{err}");
}
