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
