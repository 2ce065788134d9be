//! Hostile input against a real daemon: every case gets a clear error (or is dropped, for
//! notifications), never a crash or a hang, and after each one an honest request on a new
//! connection is answered with exactly the bytes it gets from a quiet daemon.

mod common;

use common::Daemon;
use serde_json::{json, Value};
use steadytext::protocol::codes::*;

/// What a hostile line must get.
enum Expect {
    /// An error response with this code.
    Code(i64),
    /// A batch answer: one error per entry, with these codes.
    Batch(Vec<i64>),
    /// Nothing (a notification), then a ping on the same connection is answered.
    Silence,
    /// An error with this code, then the daemon closes the connection.
    CodeThenClose(i64),
    /// A success whose raw `"id":...` text is exactly this.
    RawId(&'static str),
}

fn req(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 7}).to_string()
}

fn cases() -> Vec<(String, Vec<u8>, Expect)> {
    use Expect::*;
    let big = |n: usize| "x".repeat(n);
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("not JSON", b"this is not json".to_vec(), Code(PARSE_ERROR)),
        ("truncated JSON", b"{\"jsonrpc\":\"2.0\",".to_vec(), Code(PARSE_ERROR)),
        ("invalid UTF-8", b"\xff\xfe\xfd".to_vec(), Code(PARSE_ERROR)),
        ("NUL bytes", b"\0\0\0".to_vec(), Code(PARSE_ERROR)),
        (
            "lone surrogate",
            br#"{"jsonrpc":"2.0","method":"generate","params":{"prompt":"\ud800"},"id":7}"#.to_vec(),
            Code(PARSE_ERROR),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            Batch(vec![INVALID_REQUEST]),
        ),
        (
            "deep nesting in params",
            format!(
                r#"{{"jsonrpc":"2.0","method":"ping","params":{}{},"id":7}}"#,
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
            .into_bytes(),
            Code(PARSE_ERROR),
        ),
        ("JSON-RPC 1.0", br#"{"jsonrpc":"1.0","method":"ping","id":7}"#.to_vec(), Code(INVALID_REQUEST)),
        ("no jsonrpc", br#"{"method":"ping","id":7}"#.to_vec(), Code(INVALID_REQUEST)),
        ("no method", br#"{"jsonrpc":"2.0","id":7}"#.to_vec(), Code(INVALID_REQUEST)),
        ("method not a string", br#"{"jsonrpc":"2.0","method":5,"id":7}"#.to_vec(), Code(INVALID_REQUEST)),
        ("object id", br#"{"jsonrpc":"2.0","method":"ping","id":{"a":1}}"#.to_vec(), Code(INVALID_REQUEST)),
        ("array id", br#"{"jsonrpc":"2.0","method":"ping","id":[1]}"#.to_vec(), Code(INVALID_REQUEST)),
        (
            "unknown top-level field",
            br#"{"jsonrpc":"2.0","method":"ping","id":7,"x":1}"#.to_vec(),
            Code(INVALID_REQUEST),
        ),
        ("a number", b"42".to_vec(), Code(INVALID_REQUEST)),
        ("a string", b"\"ping\"".to_vec(), Code(INVALID_REQUEST)),
        ("unknown method", req("nope", json!({})).into_bytes(), Code(METHOD_NOT_FOUND)),
        ("100 KB method name", req(&big(100_000), json!({})).into_bytes(), Code(METHOD_NOT_FOUND)),
        ("unknown param", req("generate", json!({"prompt": "x", "sede": 1})).into_bytes(), Code(INVALID_PARAMS)),
        ("params an array", req("generate", json!(["x"])).into_bytes(), Code(INVALID_PARAMS)),
        ("params a string", req("embed", json!("x")).into_bytes(), Code(INVALID_PARAMS)),
        ("prompt null", req("generate", json!({"prompt": null})).into_bytes(), Code(INVALID_PARAMS)),
        (
            "negative max_new_tokens",
            req("generate", json!({"prompt": "x", "max_new_tokens": -1})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "float max_new_tokens",
            req("generate", json!({"prompt": "x", "max_new_tokens": 1e30})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "max_new_tokens over the limit",
            req("generate", json!({"prompt": "x", "max_new_tokens": 1_000_000_000})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "zero max_new_tokens",
            req("generate", json!({"prompt": "x", "max_new_tokens": 0})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "temperature 1000",
            req("generate", json!({"prompt": "x", "temperature": 1000.0})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "negative temperature",
            req("generate", json!({"prompt": "x", "temperature": -1.0})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "top_p 2",
            req("generate", json!({"prompt": "x", "top_p": 2.0, "temperature": 0.5})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "17 stop strings",
            req("generate", json!({"prompt": "x", "stop": vec!["a"; 17]})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        ("empty stop string", req("generate", json!({"prompt": "x", "stop": [""]})).into_bytes(), Code(INVALID_PARAMS)),
        (
            "prompt over the byte limit",
            req("generate", json!({"prompt": big(300_000)})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        (
            "stop string over the byte limit",
            req("generate", json!({"prompt": "x", "stop": [big(300_000)]})).into_bytes(),
            Code(INVALID_PARAMS),
        ),
        ("no texts", req("embed", json!({"texts": []})).into_bytes(), Code(INVALID_PARAMS)),
        ("too many texts", req("embed", json!({"texts": vec!["a"; 1000]})).into_bytes(), Code(INVALID_PARAMS)),
        ("texts not strings", req("embed", json!({"texts": [1, 2]})).into_bytes(), Code(INVALID_PARAMS)),
        ("text over the byte limit", req("embed", json!({"texts": [big(300_000)]})).into_bytes(), Code(INVALID_PARAMS)),
        (
            "path as model",
            req("generate", json!({"prompt": "x", "model": "../../etc/passwd"})).into_bytes(),
            Code(MODEL_NOT_LOADED),
        ),
        ("empty model", req("embed", json!({"texts": ["x"], "model": ""})).into_bytes(), Code(INVALID_PARAMS)),
        ("unknown cache", req("cache.clear", json!({"cache": "bogus"})).into_bytes(), Code(INVALID_PARAMS)),
        ("unknown cache.clear param", req("cache.clear", json!({"x": 1})).into_bytes(), Code(INVALID_PARAMS)),
        ("empty batch", b"[]".to_vec(), Code(INVALID_REQUEST)),
        ("batch of junk", b"[1, \"x\", {}]".to_vec(), Batch(vec![INVALID_REQUEST; 3])),
        (
            "batch over the limit",
            format!("[{}]", vec![req("ping", json!({})); 300].join(",")).into_bytes(),
            Code(INVALID_REQUEST),
        ),
        (
            "batch mixing good and bad",
            format!("[{},{}]", req("nope", json!({})), req("embed", json!({"texts": []}))).into_bytes(),
            Batch(vec![METHOD_NOT_FOUND, INVALID_PARAMS]),
        ),
        (
            "notification with bad params",
            br#"{"jsonrpc":"2.0","method":"generate","params":{"sede":1}}"#.to_vec(),
            Silence,
        ),
        ("notification of an unknown method", br#"{"jsonrpc":"2.0","method":"nope"}"#.to_vec(), Silence),
        ("HTTP POST", b"POST / HTTP/1.1\r".to_vec(), CodeThenClose(INVALID_REQUEST)),
        ("HTTP GET", b"GET /metrics HTTP/1.1".to_vec(), CodeThenClose(INVALID_REQUEST)),
        ("null id", br#"{"jsonrpc":"2.0","method":"ping","id":null}"#.to_vec(), RawId("null")),
        (
            "id beyond 64 bits",
            br#"{"jsonrpc":"2.0","method":"ping","id":18446744073709551617}"#.to_vec(),
            RawId("18446744073709551617"),
        ),
        (
            "id beyond 2^53",
            br#"{"jsonrpc":"2.0","method":"ping","id":9007199254740993}"#.to_vec(),
            RawId("9007199254740993"),
        ),
        ("fractional id", br#"{"jsonrpc":"2.0","method":"ping","id":1.50}"#.to_vec(), RawId("1.50")),
        (
            "string id with escapes",
            br#"{"jsonrpc":"2.0","method":"ping","id":"a\"b\u00e9"}"#.to_vec(),
            RawId(r#""a\"b\u00e9""#),
        ),
    ];
    let mut over = vec![b'x'; steadytext::protocol::MAX_LINE_BYTES + 1];
    over.extend_from_slice(b"tail");
    cases.push(("line over 8 MiB", over, Code(TOO_LARGE)));
    cases.into_iter().map(|(name, line, expect)| (name.to_string(), line, expect)).collect()
}

fn honest(d: &Daemon) -> Value {
    let mut c = d.connect();
    let r = c.call("embed", json!({"texts": ["an honest request"]}));
    assert!(r["error"].is_null(), "{r}");
    r["result"]["embeddings"].clone()
}

#[test]
fn every_hostile_line_gets_a_clear_error_and_honest_clients_are_served_exactly() {
    let d = Daemon::socket_activated("", &[]);
    let expected = honest(&d);
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, mut line, expect) in cases {
        line.push(b'\n');
        let mut c = d.connect();
        c.send_raw(&line);
        let code = |v: &Value| v["error"]["code"].as_i64();
        match expect {
            Expect::Code(want) => {
                let got: Value = serde_json::from_str(&c.read_raw().expect(&name)).unwrap();
                assert_eq!(code(&got), Some(want), "{name}: {got}");
                assert!(!got["error"]["message"].as_str().unwrap_or("").is_empty(), "{name}: no message");
            }
            Expect::Batch(want) => {
                let got: Value = serde_json::from_str(&c.read_raw().expect(&name)).unwrap();
                let codes: Vec<Option<i64>> = got.as_array().expect(&name).iter().map(code).collect();
                assert_eq!(codes, want.into_iter().map(Some).collect::<Vec<_>>(), "{name}: {got}");
            }
            Expect::Silence => {
                let id = c.send("ping", json!({}));
                let got = c.read();
                assert_eq!(got["id"], id, "{name}: a notification was answered: {got}");
            }
            Expect::CodeThenClose(want) => {
                let got: Value = serde_json::from_str(&c.read_raw().expect(&name)).unwrap();
                assert_eq!(code(&got), Some(want), "{name}: {got}");
                let _ = c.try_send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}\n");
                assert!(c.read_raw().is_none(), "{name}: the connection stayed open");
            }
            Expect::RawId(raw) => {
                let got = c.read_raw().expect(&name);
                assert!(got.contains(&format!("\"id\":{raw}")), "{name}: {got}");
                assert!(!got.contains("\"error\""), "{name}: {got}");
            }
        }
        assert_eq!(honest(&d), expected, "honest request after {name}");
    }
    // Junk method names are not kept: the metrics name known methods only.
    let metrics = d.connect().call("metrics", json!({}))["result"].as_str().unwrap().to_string();
    assert!(!metrics.contains("xxxxxxxx"), "client-chosen method names leaked into the metrics");
    assert!(metrics.contains("method=\"(unknown)\""), "{metrics}");
}

#[test]
fn connections_that_vanish_mid_request_leave_the_daemon_serving() {
    let d = Daemon::socket_activated("", &[]);
    let expected = honest(&d);
    for partial in [&b""[..], b"{\"jsonrpc\":\"2.0\",\"meth", b"{\"jsonrpc\":\"2.0\",\"method\":\"generate_stream\",\"params\":{\"prompt\":\"Tell a long story.\",\"max_new_tokens\":400},\"id\":1}\n"] {
        let mut c = d.connect();
        c.send_raw(partial);
        drop(c);
        assert_eq!(honest(&d), expected);
    }
    // A Unix client that shuts down its sending side after its request (`echo ... | socat`)
    // still gets the answer.
    {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"embed\",\"params\":{\"texts\":[\"an honest request\"]},\"id\":1}\n",
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["result"]["embeddings"], expected);
    }
    // Whitespace-only lines are skipped; the next request on the connection is answered.
    let mut c = d.connect();
    c.send_raw(b"\n\n   \n\t\n");
    c.send_raw(&vec![b' '; 1 << 20]);
    c.send_raw(b"\n");
    assert_eq!(c.call("ping", json!({}))["result"]["protocol"], 1);
}
