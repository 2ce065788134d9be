//! `stctl pull` against a local server that speaks the Hugging Face Hub API and serves the shared
//! model files (with a redirect to a "CDN" path, as the Hub does).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use sha1::Sha1;
use sha2::{Digest, Sha256};

struct Hub {
    endpoint: String,
    downloads: Arc<AtomicUsize>,
    corrupt: Arc<AtomicBool>,
}

fn files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in walk(root) {
        out.push((entry.strip_prefix(root).unwrap().to_string_lossy().into_owned(), entry));
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

/// Serves `root` as repository `test/<name>` at revision `main` (commit `c0ffee`).
fn serve(root: PathBuf) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let name = root.file_name().unwrap().to_string_lossy().into_owned();
    let downloads = Arc::new(AtomicUsize::new(0));
    let corrupt = Arc::new(AtomicBool::new(false));
    let (d, c) = (downloads.clone(), corrupt.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, headers, body): (&str, String, Vec<u8>) = if path
                == format!("/api/models/test/{name}/revision/main?blobs=true")
            {
                let siblings: Vec<serde_json::Value> = files(&root)
                    .into_iter()
                    .map(|(rel, p)| {
                        let bytes = std::fs::read(p).unwrap();
                        if bytes.len() > 100_000 {
                            serde_json::json!({"rfilename": rel, "size": bytes.len(), "lfs": {"sha256": hex::encode(Sha256::digest(&bytes)), "size": bytes.len()}})
                        } else {
                            let mut h = Sha1::new();
                            h.update(format!("blob {}\0", bytes.len()).as_bytes());
                            h.update(&bytes);
                            serde_json::json!({"rfilename": rel, "size": bytes.len(), "blobId": hex::encode(h.finalize())})
                        }
                    })
                    .collect();
                (
                    "200 OK",
                    String::new(),
                    serde_json::to_vec(&serde_json::json!({"sha": "c0ffee", "siblings": siblings})).unwrap(),
                )
            } else if let Some(rel) = path.strip_prefix(&format!("/test/{name}/resolve/c0ffee/")) {
                ("302 Found", format!("Location: /cdn/{rel}\r\n"), Vec::new())
            } else if let Some(rel) = path.strip_prefix("/cdn/") {
                d.fetch_add(1, Ordering::SeqCst);
                let mut bytes = std::fs::read(root.join(rel)).unwrap();
                if c.load(Ordering::SeqCst) && rel == "model.onnx" {
                    bytes[1000] ^= 1;
                }
                ("200 OK", String::new(), bytes)
            } else {
                ("404 Not Found", String::new(), b"{\"error\":\"Repository not found\"}".to_vec())
            };
            let head =
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
        }
    });
    Hub { endpoint, downloads, corrupt }
}

fn stctl(args: &[&str], hub: &Hub) -> std::process::Output {
    common::command(env!("CARGO_BIN_EXE_stctl"))
        .args(args)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn pull_downloads_checks_and_gives_the_same_model() {
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    let hub = serve(source.clone());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();

    let out = stctl(&["pull", "test/all-MiniLM-L6-v2", "--model-dir", d], &hub);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = dest.path().join("all-MiniLM-L6-v2");
    let digest = steadytext::model::ModelFiles::discover(&source).unwrap().digest().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), format!("{} ({digest})", pulled.display()));
    for f in ["model.onnx", "tokenizer.json", "config.json", "1_Pooling/config.json", "sentence_bert_config.json"] {
        assert_eq!(std::fs::read(pulled.join(f)).unwrap(), std::fs::read(source.join(f)).unwrap(), "{f}");
    }
    let embed = |model: &Path| {
        let o = stctl(&["--no-daemon", "embed", "pulled", "--model", model.to_str().unwrap()], &hub);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    assert_eq!(embed(&pulled), embed(&source));

    // A second pull (`models pull`, the same command) finds every file in place and downloads nothing.
    let before = hub.downloads.load(Ordering::SeqCst);
    assert!(stctl(&["models", "pull", "test/all-MiniLM-L6-v2", "--model-dir", d], &hub).status.success());
    assert_eq!(hub.downloads.load(Ordering::SeqCst), before);

    // The pull recorded where it came from: `models list` shows the task, digest and source.
    let out = stctl(&["--no-daemon", "models", "list", "--json", "--model-dir", d], &hub);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = &listed[0];
    assert_eq!((model["name"].as_str(), model["task"].as_str()), (Some("all-MiniLM-L6-v2"), Some("embedding")));
    assert_eq!(model["digest"], digest.as_str());
    assert!(model["source"].as_str().unwrap().starts_with("hub:test/all-MiniLM-L6-v2@"), "{model}");
    assert!(model["size"].as_u64().unwrap() > 80_000_000);
    let verify = |d: &str| stctl(&["--no-daemon", "models", "verify", "all-MiniLM-L6-v2", "--model-dir", d], &hub);
    assert!(verify(d).status.success());
    // One flipped byte, size and time kept: verify finds it.
    let onnx = pulled.join("model.onnx");
    let mtime = std::fs::metadata(&onnx).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&onnx, bytes).unwrap();
    std::fs::File::options().write(true).open(&onnx).unwrap().set_modified(mtime).unwrap();
    let out = verify(d);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("CHANGED") && said.contains("model.onnx"), "{said}");
}

#[test]
fn a_damaged_download_leaves_nothing_and_errors_are_clear() {
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    let hub = serve(source);
    hub.corrupt.store(true, Ordering::SeqCst);
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let out = stctl(&["pull", "test/all-MiniLM-L6-v2", "--model-dir", d], &hub);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("do not match"), "{err}");
    let folder = dest.path().join("all-MiniLM-L6-v2");
    assert!(!folder.join("model.onnx").exists());
    assert!(walk(&folder).iter().all(|p| !p.to_string_lossy().contains(".tmp-")), "temp file left behind");

    let out = stctl(&["pull", "test/missing", "--model-dir", d], &hub);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stctl(&["pull", "not-a-repo", "--model-dir", d], &hub);
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner/name"));
}
