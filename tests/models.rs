//! `stctl models`: importing a local folder, refusing bad ones, and removing a model only when the
//! daemon does not serve it (or with --force).

mod common;

use std::path::Path;
use std::process::Output;

use common::{command, Daemon};
use serde_json::json;

fn stctl(args: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_stctl")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn import_checks_the_layout_and_copies_a_whole_folder() {
    let store = tempfile::tempdir().unwrap();
    let d = store.path().to_str().unwrap();
    // A folder without tokenizer.json is refused, and nothing appears.
    let broken = tempfile::tempdir().unwrap();
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    for f in ["model.onnx", "config.json"] {
        std::os::unix::fs::symlink(source.join(f), broken.path().join(f)).unwrap();
    }
    let out = stctl(&["models", "import", broken.path().to_str().unwrap(), "--name", "broken", "--model-dir", d]);
    assert!(!out.status.success());
    assert!(text(&out).contains("tokenizer.json"), "{}", text(&out));
    assert!(std::fs::read_dir(store.path()).unwrap().next().is_none(), "a refused import left something behind");
    // A good folder is copied with its digest and listed as imported.
    let out = stctl(&["models", "import", source.to_str().unwrap(), "--model-dir", d]);
    assert!(out.status.success(), "{}", text(&out));
    let digest = steadytext::model::ModelFiles::discover(&source).unwrap().digest().unwrap();
    assert!(text(&out).contains(&digest), "{}", text(&out));
    let out = stctl(&["--no-daemon", "models", "list", "--json", "--model-dir", d]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["digest"], digest.as_str());
    assert!(listed[0]["source"].as_str().unwrap().starts_with("import:"), "{listed}");
    // Importing over an existing model is refused.
    let again = stctl(&["models", "import", source.to_str().unwrap(), "--model-dir", d]);
    assert!(!again.status.success() && text(&again).contains("exists"), "{}", text(&again));
}

#[test]
fn rm_refuses_a_model_the_daemon_serves_unless_forced() {
    let store = tempfile::tempdir().unwrap();
    let d = store.path().to_str().unwrap();
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    assert!(stctl(&["models", "import", source.to_str().unwrap(), "--model-dir", d]).status.success());
    let daemon = Daemon::socket_activated("", &[("STEADYTEXT_MODEL_DIR", d)]);
    let served = daemon.connect().call("embed", json!({"texts": ["x"]}));
    assert!(served["error"].is_null(), "{served}");
    let socket = format!("unix:{}", daemon.socket.display());
    let rm = |extra: &[&str]| {
        let mut args = vec!["--socket", socket.as_str(), "models", "rm", "all-MiniLM-L6-v2", "--model-dir", d];
        args.extend_from_slice(extra);
        stctl(&args)
    };
    let refused = rm(&[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("serves") && text(&refused).contains("--force"), "{}", text(&refused));
    assert!(Path::new(d).join("all-MiniLM-L6-v2/model.onnx").is_file());
    let forced = rm(&["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(!Path::new(d).join("all-MiniLM-L6-v2").exists());
    // Removing what is not there says so.
    assert!(text(&rm(&[])).contains("no model folder"));
}

#[test]
fn a_model_folder_this_user_may_not_read_is_reported_as_such() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // running as another user needs root; CI runs as root
    }
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let models = top.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(common::models_dir().join("all-MiniLM-L6-v2"), models.join("m")).unwrap();
    let out = command("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups", env!("CARGO_BIN_EXE_stctl"), "--no-daemon"])
        .args(["embed", "x", "--model", "m"])
        .env("STEADYTEXT_MODEL_DIR", &models)
        .env("HOME", top.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("permission denied") && said.contains("steadytext group"), "{said}");
    assert!(!said.contains("no such model folder"), "{said}");
}

/// A copy of the shared model folder `name` (files linked) whose graph the Python `edit` (a
/// statement on the loaded ModelProto `m`, with `arg` the JSON of `arg`) changes.
fn rewritten(name: &str, edit: &str, arg: &serde_json::Value) -> tempfile::TempDir {
    let source = common::models_dir().join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.onnx" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let python = common::venv_python("tools/cross-encoder/requirements.txt");
    let script = format!(
        "import onnx, sys, json\nfrom onnx import helper, TensorProto\nm = onnx.load(sys.argv[1])\narg = json.loads(sys.argv[3])\n{edit}\nonnx.save(m, sys.argv[2])\n"
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .arg(source.join("model.onnx"))
        .arg(dir.path().join("model.onnx"))
        .arg(arg.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The shared model folder `name` whose graph gets the extra inputs `inputs` (name, ONNX
/// element type, shape), unused by the graph.
fn with_inputs(name: &str, inputs: &[(&str, i32, &[i64])]) -> tempfile::TempDir {
    let edit =
        "for name, elem, shape in arg:\n    m.graph.input.append(helper.make_tensor_value_info(name, elem, shape))";
    rewritten(name, edit, &serde_json::to_value(inputs).unwrap())
}

/// The shared SmolLM2 as newer transformers exports take positions: a `cache_position` input
/// (`[seq]`, the call's positions in the cache) instead of `position_ids`, which the graph now
/// computes from it (batch 1).
fn with_cache_position() -> tempfile::TempDir {
    let edit = "inputs = [i for i in m.graph.input if i.name != 'position_ids']\n\
        del m.graph.input[:]\n\
        m.graph.input.extend(inputs + [helper.make_tensor_value_info('cache_position', TensorProto.INT64, ['seq'])])\n\
        m.graph.initializer.append(helper.make_tensor('cache_position_axes', TensorProto.INT64, [1], [0]))\n\
        m.graph.node.insert(0, helper.make_node('Unsqueeze', ['cache_position', 'cache_position_axes'], ['position_ids']))";
    rewritten("SmolLM2-135M-Instruct", edit, &serde_json::Value::Null)
}

#[test]
fn the_loader_feeds_the_optional_inputs_a_graph_takes_and_names_the_one_it_cannot() {
    const INT64: i32 = 7;
    const BOOL: i32 = 9;
    let generate = |model: &Path| {
        stctl(&[
            "--no-daemon",
            "generate",
            "Name a colour.",
            "--max-new-tokens",
            "8",
            "--model",
            model.to_str().unwrap(),
        ])
    };
    let shared = generate(&common::models_dir().join("SmolLM2-135M-Instruct"));
    assert!(shared.status.success(), "{}", text(&shared));
    // Optimum's merged-decoder flag and transformers.js' logits count: fed, and the answer is the same.
    let optional =
        with_inputs("SmolLM2-135M-Instruct", &[("num_logits_to_keep", INT64, &[]), ("use_cache_branch", BOOL, &[1])]);
    let out = generate(optional.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, shared.stdout);
    // Positions as `cache_position` (the graph derives its position_ids from it): fed each
    // call's positions in the cache, the same answer; any other positions would change it.
    let cache_position = with_cache_position();
    let out = generate(cache_position.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, shared.stdout);
    // An input steadytext does not feed (OpenVINO's beam index): refused at load, in one line naming it.
    let unknown = with_inputs("SmolLM2-135M-Instruct", &[("beam_idx", INT64, &[-1])]);
    let out = generate(unknown.path());
    assert!(!out.status.success() && text(&out).contains("takes input `beam_idx`"), "{}", text(&out));
    let task_id = with_inputs("all-MiniLM-L6-v2", &[("task_id", INT64, &[])]);
    let out = stctl(&["--no-daemon", "embed", "x", "--model", task_id.path().to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("takes input `task_id`"), "{}", text(&out));
}

#[test]
fn a_daemon_without_models_says_what_to_pull_and_serves_it_once_reloaded() {
    let store = tempfile::tempdir().unwrap();
    let d = store.path().to_str().unwrap();
    let mut daemon = Daemon::socket_activated("", &[("STEADYTEXT_MODEL_DIR", d)]);
    let mut conn = daemon.connect();
    let refused = conn.call("generate", json!({"prompt": "Hi", "max_new_tokens": 4}));
    let message = refused["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("stctl models pull small") && message.contains("reload"), "{refused}");
    assert!(conn.call("ping", json!({}))["error"].is_null(), "it serves without models");

    // What `stctl models pull small` makes: a folder named after the alias, which the built-in
    // default falls back to.
    std::os::unix::fs::symlink(common::models_dir().join("SmolLM2-135M-Instruct"), store.path().join("small")).unwrap();
    let socket = format!("unix:{}", daemon.socket.display());
    let out = stctl(&["--socket", &socket, "reload"]);
    assert!(out.status.success(), "{}", text(&out));
    // `stctl reload` (systemctl reload's ExecReload) returns when the reload is over: the next
    // request is served by the new model, with no wait or retry.
    let case = &common::reference("SmolLM2-135M-Instruct/reference_ort.json")["cases"][0];
    let answer = conn.call("generate", json!({"prompt": case["prompt"], "max_new_tokens": 48}));
    assert_eq!(answer["result"]["text"], case["greedy_text"], "{answer}");
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon never exited:\n{}", daemon.log());
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(std::time::Duration::from_secs(30)), Some(0));
}

#[test]
fn a_decoder_exported_as_an_embedder_gets_an_empty_cache_and_pools_its_last_token() {
    // The shared SmolLM2 as Qwen3-Embedding's ONNX export has it: a decoder with past_key_values
    // inputs, whose final hidden state is the output `last_hidden_state`; last-token pooling, a
    // query prompt. Python onnxruntime computes the expected vector from the same graph.
    let source = common::models_dir().join("SmolLM2-135M-Instruct");
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::os::unix::fs::symlink(source.join(f), dir.path().join(f)).unwrap();
    }
    let python = common::venv_python("tools/cross-encoder/requirements.txt");
    let script = r#"
import json, os, sys
import numpy as np, onnx, onnxruntime as ort
from tokenizers import Tokenizer
src, out, text = sys.argv[1:4]
m = onnx.load(os.path.join(src, "model.onnx"))
head = next(n for n in m.graph.node if "logits" in n.output)
m.graph.node.append(onnx.helper.make_node("Identity", [head.input[0]], ["last_hidden_state"]))
m.graph.output.append(onnx.helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, ["batch", "seq", 576]))
onnx.save(m, os.path.join(out, "model.onnx"))
json.dump({"architectures": ["LlamaModel"], "hidden_size": 576}, open(os.path.join(out, "config.json"), "w"))
os.makedirs(os.path.join(out, "1_Pooling"))
json.dump({"word_embedding_dimension": 576, "pooling_mode_lasttoken": True}, open(os.path.join(out, "1_Pooling/config.json"), "w"))
json.dump({"prompts": {"query": "Instruct: find the answer\nQuery:"}}, open(os.path.join(out, "config_sentence_transformers.json"), "w"))
ids = Tokenizer.from_file(os.path.join(src, "tokenizer.json")).encode(text).ids
s = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
for i in s.get_inputs():
    if i.name == "position_ids":
        feed[i.name] = np.arange(len(ids), dtype=np.int64)[None]
    elif i.name.startswith("past_key_values."):
        feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
hidden = s.run(["last_hidden_state"], feed)[0][0, -1]
# steadytext's L2 normalization: the squares summed in order in float64, the root as float32.
total = 0.0
for x in hidden:
    total += float(x) * float(x)
unit = hidden / np.float32(max(total ** 0.5, 1e-12))
print(json.dumps([float(x) for x in unit]))
"#;
    let sentence = "Deterministic text is a feature.";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&source)
        .arg(dir.path())
        .arg(sentence)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<f32> =
        serde_json::from_slice::<Vec<f64>>(&out.stdout).unwrap().into_iter().map(|x| x as f32).collect();

    let model = dir.path().to_str().unwrap();
    let embed = |mode: &str| {
        let out = stctl(&["--no-daemon", "embed", sentence, "--model", model, "--mode", mode]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Vec<f32>>(&out.stdout).unwrap()
    };
    // The last token's hidden state, L2-normalized: bit for bit.
    assert_eq!(embed("passage"), expected);
    assert_ne!(embed("query"), expected, "the query prompt is applied");
    // In company of a longer text (one call, padded batch) it embeds the same.
    let out = stctl(&[
        "--no-daemon",
        "embed",
        sentence,
        "and a longer text that pads the other row of the batch",
        "--model",
        model,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let first: Vec<f32> = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first, expected);
}
