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
    let repo = format!("test/{}", root.file_name().unwrap().to_string_lossy());
    serve_repo(root, &repo, "main")
}

/// Serves `root` as repository `repo` at `revision` only (commit `c0ffee`).
fn serve_repo(root: PathBuf, repo: &str, revision: &str) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (repo, revision) = (repo.to_string(), revision.to_string());
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
                == format!("/api/models/{repo}/revision/{revision}?blobs=true")
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
            } else if let Some(rel) = path.strip_prefix(&format!("/{repo}/resolve/c0ffee/")) {
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

/// A copy of the shared MiniLM folder laid out as the Hub repository has it: configs at the top,
/// the graph as `onnx/model.onnx` with its weights in the external-data file `onnx/weights.bin`
/// (a name only the graph gives), and float16 variants and other files a pull must leave alone.
fn hub_layout() -> tempfile::TempDir {
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    let repo = tempfile::tempdir().unwrap();
    for (rel, path) in files(&source) {
        if rel != "model.onnx" && !rel.starts_with("reference") {
            std::fs::create_dir_all(repo.path().join(&rel).parent().unwrap()).unwrap();
            std::fs::copy(path, repo.path().join(rel)).unwrap();
        }
    }
    std::fs::create_dir_all(repo.path().join("onnx")).unwrap();
    let python = common::venv_python("tools/cross-encoder/requirements.txt");
    let script = "import onnx, sys\n\
        m = onnx.load(sys.argv[1])\n\
        onnx.save_model(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, location='weights.bin', size_threshold=1024)\n";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(source.join("model.onnx"))
        .arg(repo.path().join("onnx/model.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for decoy in ["onnx/model_fp16.onnx", "onnx/model_q4f16.onnx", "onnx/other.bin", "model.safetensors"] {
        std::fs::write(repo.path().join(decoy), b"not for this pull").unwrap();
    }
    repo
}

fn embed(model: &Path, hub: &Hub) -> Vec<u8> {
    let o = stctl(&["--no-daemon", "embed", "pulled", "--model", model.to_str().unwrap()], hub);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn an_alias_pulls_its_pinned_commit_and_the_external_data_its_graph_names() {
    let alias = steadytext::hub::alias("embed").unwrap();
    let repo = hub_layout();
    let hub = serve_repo(repo.path().to_path_buf(), alias.repo, alias.revision);
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();

    let out = stctl(&["models", "pull", "embed", "--model-dir", d], &hub);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = dest.path().join("embed");
    let mut got: Vec<String> = files(&pulled).into_iter().map(|(rel, _)| rel).collect();
    got.sort();
    let mut want: Vec<String> = files(repo.path())
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| {
            !["onnx/model_fp16.onnx", "onnx/model_q4f16.onnx", "onnx/other.bin", "model.safetensors"]
                .contains(&rel.as_str())
        })
        .chain(["steadytext-manifest.json".to_string()])
        .collect();
    want.sort();
    assert_eq!(got, want, "the graph, the external data it names, configs and tokenizer; nothing else");
    assert_eq!(embed(&pulled, &hub), embed(&common::models_dir().join("all-MiniLM-L6-v2"), &hub));

    // The digest covers the external data: a changed byte there is found by verify.
    let weights = pulled.join("onnx/weights.bin");
    let digest = steadytext::model::ModelFiles::discover(&pulled).unwrap().digest().unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    assert_ne!(steadytext::model::ModelFiles::discover(&pulled).unwrap().digest().unwrap(), digest);

    let out = stctl(&["--no-daemon", "models", "list", "--json", "--model-dir", d], &hub);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["source"], format!("hub:{}@c0ffee", alias.repo));
    // Only the pinned revision is asked for: another one is not found.
    let out = stctl(&["models", "pull", "embed", "--revision", "main", "--model-dir", d], &hub);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stctl(&["models", "pull", "--list"], &hub);
    let said = String::from_utf8_lossy(&out.stdout);
    for a in steadytext::hub::ALIASES {
        assert!(said.contains(a.repo) && said.contains(a.revision), "{said}");
    }
}

#[test]
fn pulls_take_a_cpu_variant_and_refuse_float16_ones() {
    let repo = hub_layout();
    let onnx = repo.path().join("onnx");
    std::fs::rename(onnx.join("model.onnx"), onnx.join("model_q4.onnx")).unwrap();
    let hub = serve(repo.path().to_path_buf());
    let name = repo.path().file_name().unwrap().to_string_lossy().into_owned();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let pull = |extra: &[&str]| {
        let mut args = vec!["models", "pull"];
        let full = format!("test/{name}");
        args.push(&full);
        args.extend_from_slice(extra);
        args.extend(["--model-dir", d]);
        stctl(&args, &hub)
    };

    let out = pull(&["--onnx-file", "onnx/model_q4f16.onnx"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("float16"), "{err}");
    assert!(!dest.path().join(&name).exists(), "a refused pull downloads nothing");

    let out = pull(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = dest.path().join(&name);
    assert!(pulled.join("onnx/model_q4.onnx").is_file() && pulled.join("onnx/weights.bin").is_file());
    assert!(!pulled.join("onnx/model_fp16.onnx").exists() && !pulled.join("onnx/model_q4f16.onnx").exists());
    assert_eq!(embed(&pulled, &hub), embed(&common::models_dir().join("all-MiniLM-L6-v2"), &hub));

    std::fs::remove_file(onnx.join("model_q4.onnx")).unwrap();
    let out = pull(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("float16 or GPU variants"), "{err}");
}

#[test]
fn a_genai_subfolder_is_pulled_as_the_model_folder() {
    // onnxruntime-genai's layout on the Hub: each variant a folder with its graph, genai_config.json
    // and tokenizer; here the fused SmolLM2 in one, with generation_config.json only at the top.
    let source = common::fused_models().join("SmolLM2-135M-Instruct-fused-acc4");
    let repo = tempfile::tempdir().unwrap();
    let variant = repo.path().join("cpu_and_mobile/cpu-int4-acc4");
    std::fs::create_dir_all(&variant).unwrap();
    for (rel, path) in files(&source) {
        let to = if rel == "generation_config.json" { repo.path().join(&rel) } else { variant.join(&rel) };
        std::fs::hard_link(&path, &to).or_else(|_| std::fs::copy(&path, &to).map(drop)).unwrap();
    }
    let other = repo.path().join("gpu/gpu-fp16");
    std::fs::create_dir_all(&other).unwrap();
    for decoy in ["genai_config.json", "model.onnx", "tokenizer.json"] {
        std::fs::write(other.join(decoy), b"not for this pull").unwrap();
    }
    std::fs::write(repo.path().join("README.md"), b"# a model card").unwrap();
    let hub = serve(repo.path().to_path_buf());
    let name = repo.path().file_name().unwrap().to_string_lossy().into_owned();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let full = format!("test/{name}");

    // The GPU folder's graph is refused by its path, before anything is downloaded.
    let out = stctl(&["models", "pull", &full, "--onnx-file", "gpu/gpu-fp16/model.onnx", "--model-dir", d], &hub);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("GPU variants"), "{err}");
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 0, "a refused pull downloads nothing");

    // Without --onnx-file the CPU folder is taken (it batches), the GPU one never fetched.
    let out = stctl(&["models", "pull", &full, "--model-dir", d], &hub);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = dest.path().join(&name);
    let mut got: Vec<String> = files(&pulled).into_iter().map(|(rel, _)| rel).collect();
    got.sort();
    let mut want: Vec<String> = files(&source)
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| rel != "reference.json")
        .chain(["steadytext-manifest.json".to_string()])
        .collect();
    want.sort();
    assert_eq!(got, want, "the variant's files at the top, generation_config.json from the top; nothing else");

    let generate = |model: &Path| {
        let o = stctl(
            &["--no-daemon", "generate", "--json", "--max-new-tokens", "12", "--model", model.to_str().unwrap(), "Hi"],
            &hub,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["text"].clone(), v["token_ids"].clone(), v["model_digest"].clone())
    };
    assert_eq!(generate(&pulled), generate(&source), "the same model: same digest, same answer");
}

#[test]
fn a_decoder_pulled_bare_takes_int4_before_float32() {
    // onnx-community's transformers.js layout: onnx/model.onnx (float32) beside onnx/model_q4.onnx.
    // Stand-ins: any ONNX graph will do, the test looks at which file comes down.
    let graph = common::models_dir().join("all-MiniLM-L6-v2/model.onnx");
    let pull_from = |config: &Path| {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("onnx")).unwrap();
        for (to, from) in [
            ("config.json", config.to_path_buf()),
            ("tokenizer.json", config.with_file_name("tokenizer.json")),
            ("onnx/model.onnx", graph.clone()),
            ("onnx/model_q4.onnx", graph.clone()),
        ] {
            std::fs::hard_link(&from, repo.path().join(to))
                .or_else(|_| std::fs::copy(&from, repo.path().join(to)).map(drop))
                .unwrap();
        }
        let hub = serve(repo.path().to_path_buf());
        let name = repo.path().file_name().unwrap().to_string_lossy().into_owned();
        let dest = tempfile::tempdir().unwrap();
        let out =
            stctl(&["models", "pull", &format!("test/{name}"), "--model-dir", dest.path().to_str().unwrap()], &hub);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pulled = dest.path().join(&name);
        (pulled.join("onnx/model_q4.onnx").is_file(), pulled.join("onnx/model.onnx").is_file())
    };
    let decoder = pull_from(&common::models_dir().join("SmolLM2-135M-Instruct/config.json"));
    assert_eq!(decoder, (true, false), "a decoder (LlamaForCausalLM) takes the int4 graph only");
    let encoder = pull_from(&common::models_dir().join("all-MiniLM-L6-v2/config.json"));
    assert_eq!(encoder, (false, true), "an encoder keeps float32");
}

/// Protobuf bytes of field `number` holding `payload` (length-delimited).
fn proto_field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |mut v: u64| loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    put((number << 3) | 2);
    put(payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// The header of an ONNX graph (no nodes) whose weights lie in `model.onnx_data` and whose KV
/// input `past_key_values.0.key` has ONNX element type `kv_type`: what a pull reads of a graph
/// before its weights.
fn graph_header(kv_type: u8) -> Vec<u8> {
    let external = |key: &[u8], value: &[u8]| proto_field(13, &[proto_field(1, key), proto_field(2, value)].concat());
    let weight = [proto_field(8, b"w"), external(b"location", b"model.onnx_data"), vec![0x70, 1]].concat();
    let tensor_type = |elem: u8| proto_field(2, &proto_field(1, &[0x08, elem]));
    let input = |name: &[u8], elem: u8| proto_field(11, &[proto_field(1, name), tensor_type(elem)].concat());
    let graph = [proto_field(5, &weight), input(b"input_ids", 7), input(b"past_key_values.0.key", kv_type)].concat();
    [vec![0x08, 9], proto_field(7, &graph)].concat()
}

#[test]
fn variants_for_other_devices_are_refused_before_their_weights_come_down() {
    // A graph under a neutral name whose KV cache is float16 (a WebGPU export): its header is
    // read once it is here, and its weights are never fetched; the folder the pull made is gone.
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("model.onnx"), graph_header(10)).unwrap();
    std::fs::write(repo.path().join("model.onnx_data"), vec![0u8; 200_000]).unwrap();
    std::fs::copy(common::models_dir().join("all-MiniLM-L6-v2/tokenizer.json"), repo.path().join("tokenizer.json"))
        .unwrap();
    let hub = serve(repo.path().to_path_buf());
    let name = repo.path().file_name().unwrap().to_string_lossy().into_owned();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let full = format!("test/{name}");
    let out = stctl(&["models", "pull", &full, "--model-dir", d], &hub);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pulling {full}@c0ffee model.onnx: 3 files")),
        "the plan comes before the download: {err}"
    );
    assert!(!out.status.success() && err.contains("`past_key_values.0.key` is not float32 (ONNX type 10)"), "{err}");
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 2, "the tokenizer and the graph, not its weights");
    assert!(!dest.path().join(&name).exists(), "the refused pull's folder is removed");

    // The same graph with a float32 KV cache passes that check and fetches its weights.
    std::fs::write(repo.path().join("model.onnx"), graph_header(1)).unwrap();
    let out = stctl(&["models", "pull", &full, "--model-dir", d], &hub);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not float32"), "{err}");
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 5, "tokenizer, graph and weights this time");

    // A genai folder built for another execution provider, under a name that does not say so:
    // refused from its genai_config.json, before any file is downloaded.
    let genai = tempfile::tempdir().unwrap();
    let folder = genai.path().join("int4-awq-block-128");
    std::fs::create_dir_all(&folder).unwrap();
    let config = serde_json::json!({"model": {"decoder": {"filename": "model.onnx",
        "session_options": {"provider_options": [{"webgpu": {}}]}}}});
    std::fs::write(folder.join("genai_config.json"), config.to_string()).unwrap();
    std::fs::write(folder.join("model.onnx"), graph_header(1)).unwrap();
    std::fs::copy(common::models_dir().join("all-MiniLM-L6-v2/tokenizer.json"), folder.join("tokenizer.json")).unwrap();
    let hub = serve(genai.path().to_path_buf());
    let name = genai.path().file_name().unwrap().to_string_lossy().into_owned();
    let out = stctl(
        &["models", "pull", &format!("test/{name}"), "--onnx-file", "int4-awq-block-128/model.onnx", "--model-dir", d],
        &hub,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("built for the webgpu execution provider"), "{err}");
    assert_eq!(hub.downloads.load(Ordering::SeqCst), 1, "genai_config.json read, nothing else downloaded");
    assert!(!dest.path().join(&name).exists(), "nothing kept");
}
