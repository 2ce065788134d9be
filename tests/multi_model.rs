//! Several generation models in one daemon: three folders of the shared model with different
//! chat templates (so each answers differently), `[models] max_loaded = 2`. Requests alternate
//! among them; every answer is its own model's (as direct mode gives it); the two most recently
//! used are the loaded ones; concurrent requests for a model being loaded all wait and succeed;
//! an idle model unloads after `keep_alive_secs` and the daemon's RSS drops.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};
use steadytext::core::validate::ToRequest;
use steadytext::model::ModelKind;

use serde_json::{json, Value};
use steadytext::protocol::GenerateParams;
use steadytext::service::GenerationService;

use common::Daemon;

/// The system prompt each model folder's chat template puts first.
const PERSONAS: [(&str, &str); 3] = [
    ("pirate", "You are a pirate. Answer like a pirate."),
    ("poet", "You are a poet. Answer in rhyme."),
    ("french", "You answer only in French."),
];

/// A model folder `name` in `dir`: the shared SmolLM2's files linked, its template's default
/// system prompt replaced by `system`.
fn persona_model(dir: &Path, name: &str, system: &str) {
    let shared = common::models_dir().join("SmolLM2-135M-Instruct");
    let folder = dir.join(name);
    std::fs::create_dir(&folder).unwrap();
    for file in ["model.onnx", "tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json"] {
        std::os::unix::fs::symlink(shared.join(file), folder.join(file)).unwrap();
    }
    let template = std::fs::read_to_string(shared.join("chat_template.jinja")).unwrap();
    let original = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    assert!(template.contains(original));
    std::fs::write(folder.join("chat_template.jinja"), template.replace(original, system)).unwrap();
}

fn generation_models(conn: &mut common::Conn) -> Vec<String> {
    let status = conn.call("status", json!({}))["result"].clone();
    let mut names: Vec<String> = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "generation")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn rss_mib(conn: &mut common::Conn) -> u64 {
    conn.call("status", json!({}))["result"]["metrics"]["rss_bytes"].as_u64().unwrap() >> 20
}

#[test]
fn three_models_two_loaded_each_answers_as_itself() {
    let models = tempfile::tempdir().unwrap();
    for (name, system) in PERSONAS {
        persona_model(models.path(), name, system);
    }
    std::os::unix::fs::symlink(common::models_dir().join("all-MiniLM-L6-v2"), models.path().join("all-MiniLM-L6-v2"))
        .unwrap();
    let prompt = "Say hello to the crew.";
    let request = |model: &str| json!({"prompt": prompt, "max_new_tokens": 12, "model": model});

    // Each model's answer in direct mode (the engine in this process).
    let mut expected = std::collections::HashMap::new();
    for (name, _) in PERSONAS {
        let mut config = common::config(0).for_model(ModelKind::Generation, name);
        config.model_dir = models.path().to_path_buf();
        let params: GenerateParams = serde_json::from_value(request(name)).unwrap();
        let text = GenerationService::load(&config, None)
            .unwrap()
            .run(&params.to_request(&config).unwrap(), &mut |_| true)
            .unwrap()
            .generation
            .text;
        expected.insert(name, text);
    }
    assert_ne!(expected["pirate"], expected["poet"], "the personas must answer differently for this test");
    assert_ne!(expected["poet"], expected["french"]);

    let config = "generation_model = \"pirate\"\n[cache]\ngeneration_capacity = 0\n[models]\nmax_loaded = 2\n";
    let model_dir = models.path().display().to_string();
    let d = Daemon::socket_activated(config, &[("STEADYTEXT_MODEL_DIR", &model_dir)]);
    let mut conn = d.connect();
    let ask = |conn: &mut common::Conn, model: &str| {
        let started = Instant::now();
        let answer = conn.call("generate", request(model));
        assert!(answer["error"].is_null(), "{model}: {answer}");
        assert_eq!(answer["result"]["text"], Value::from(expected[model].clone()), "{model} answered as another");
        assert_eq!(answer["result"]["model"], model);
        started.elapsed()
    };
    ask(&mut conn, "pirate");
    let first_poet = ask(&mut conn, "poet");
    assert_eq!(generation_models(&mut conn), ["pirate", "poet"]);
    // Alternating: each load of the third unloads the least recently used one.
    let mut load_times = vec![first_poet];
    for (model, then_loaded) in [
        ("pirate", ["pirate", "poet"]),
        ("french", ["french", "pirate"]),
        ("poet", ["french", "poet"]),
        ("french", ["french", "poet"]),
        ("pirate", ["french", "pirate"]),
    ] {
        let was_loaded = generation_models(&mut conn).contains(&model.to_string());
        let took = ask(&mut conn, model);
        if !was_loaded {
            load_times.push(took);
        }
        assert_eq!(generation_models(&mut conn), then_loaded, "after asking {model}");
    }

    // Four clients ask for the unloaded poet at once: all wait for its one load and succeed.
    let poet_loads = |log: String| {
        log.lines().filter(|l| l.contains("loading a model a request names") && l.contains("poet")).count()
    };
    let loads_before = poet_loads(d.log());
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut c = d.connect();
                    let answer = c.call("generate", request("poet"));
                    assert_eq!(answer["result"]["text"], Value::from(expected["poet"].clone()), "{answer}");
                })
            })
            .collect();
        clients.into_iter().for_each(|c| c.join().unwrap());
    });
    assert_eq!(poet_loads(d.log()), loads_before + 1, "one load for the four requests");
    assert_eq!(generation_models(&mut conn), ["pirate", "poet"]);

    // A path or a missing folder is not loaded on a request's say.
    for bad in [common::models_dir().join("SmolLM2-135M-Instruct").display().to_string(), "nobody".into()] {
        let answer = conn.call("generate", request(&bad));
        assert_eq!(answer["error"]["code"], steadytext::protocol::codes::MODEL_NOT_LOADED, "{bad}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("not found"), "{bad}: {answer}");
    }

    // keep_alive: with 1 s, idle models unload and the memory goes back.
    let before = rss_mib(&mut conn);
    let config_file = d.socket.parent().unwrap().join("steadytext.toml");
    std::fs::write(&config_file, format!("{config}keep_alive_secs = 1\n")).unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !generation_models(&mut conn).is_empty() {
        assert!(Instant::now() < deadline, "idle models were not unloaded:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_mib(&mut conn);
    eprintln!(
        "multi-model: loads took {:?}; RSS with two generation models loaded {before} MiB, after they unloaded {after} MiB",
        load_times
    );
    assert!(after + 100 < before, "RSS {before} MiB -> {after} MiB: unloading gave no memory back");
    // And a request loads its model again.
    ask(&mut conn, "french");
}
