//! Structured output: 20 JSON Schemas (nested objects, arrays, enums, bounded numbers, patterns,
//! nullable fields, constants, anyOf), a regex, choices and a Lark grammar, through the
//! daemon and in direct mode. Every answer satisfies its constraint (checked by independent
//! validators: Python's `jsonschema`, `re`), both modes give the same bytes, the constraint is part
//! of the cache key, and a constraint that does not compile, two constraints at once, or too few
//! tokens are clear errors while the daemon serves on.

mod common;

use serde_json::{json, Value};
use steadytext::protocol::{codes, GenerateParams};
use steadytext::service::GenerationService;

use common::Daemon;

/// The requests: one per schema of `tests/structured/schemas.json`, then a regex, choices and a
/// Lark grammar.
fn cases() -> Vec<Value> {
    let schemas: Vec<Value> = serde_json::from_str(include_str!("structured/schemas.json")).unwrap();
    let mut cases: Vec<Value> = schemas
        .into_iter()
        .map(|c| json!({"prompt": c["prompt"], "schema": c["schema"], "max_new_tokens": 200}))
        .collect();
    cases.push(json!({"prompt": "A phone number:", "regex": "[0-9]{3}-[0-9]{4}", "max_new_tokens": 20}));
    cases.push(json!({"prompt": "Pick a primary color.", "choices": ["red", "yellow", "blue"], "max_new_tokens": 8}));
    cases.push(json!({"prompt": "Three fruits, comma-separated.", "max_new_tokens": 40,
                      "grammar": "start: item \",\" item \",\" item\nitem: /[a-z]{1,10}/"}));
    cases
}

#[test]
fn every_answer_satisfies_its_constraint_alike_in_daemon_and_direct_mode() {
    let d = Daemon::socket_activated("", &[]);
    let mut conn = d.connect();
    let cases = cases();
    let answers: Vec<Value> = cases
        .iter()
        .map(|params| {
            let answer = conn.call("generate", params.clone());
            assert!(answer["error"].is_null(), "{params}: {answer}");
            answer["result"].clone()
        })
        .collect();

    // Direct mode (the engine in this process) gives the same bytes.
    let config = common::config(0);
    let mut service = GenerationService::load(&config, None).unwrap();
    for (params, daemon) in cases.iter().zip(&answers) {
        let request = serde_json::from_value::<GenerateParams>(params.clone()).unwrap().to_request(&config).unwrap();
        let direct = service.run(&request, &mut |_| true).unwrap();
        assert_eq!(
            (json!(direct.generation.text), json!(direct.generation.token_ids)),
            (daemon["text"].clone(), daemon["token_ids"].clone()),
            "{params}: direct mode differs from the daemon"
        );
    }

    // Every answer checked by independent validators.
    let checked: Vec<Value> =
        cases.iter().zip(&answers).map(|(p, a)| json!({"params": p, "text": a["text"]})).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&checked).unwrap()).unwrap();
    let python = common::venv_python("tests/python/requirements.txt");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/structured/validate.py");
    let out = std::process::Command::new(python).arg(script).arg(file.path()).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let grammar = answers.last().unwrap()["text"].as_str().unwrap();
    let items: Vec<&str> = grammar.split(',').collect();
    assert!(
        items.len() == 3
            && items.iter().all(|i| (1..=10).contains(&i.len()) && i.chars().all(|c| c.is_ascii_lowercase())),
        "{grammar:?}"
    );

    // The constraint is part of the cache key: a repeat is a hit; other choices are not.
    let choices = &cases[21];
    let again = conn.call("generate", choices.clone());
    assert_eq!((&again["result"]["text"], &again["result"]["cached"]), (&answers[21]["text"], &json!(true)));
    let other = json!({"prompt": choices["prompt"], "choices": ["green", "purple"], "max_new_tokens": 8});
    let other = conn.call("generate", other);
    assert_eq!(other["result"]["cached"], json!(false), "{other}");
    assert!(["green", "purple"].contains(&other["result"]["text"].as_str().unwrap()), "{other}");

    // Clear errors, before any model work or at the end; the daemon serves on.
    let errors = [
        (json!({"prompt": "x", "regex": "("}), "does not compile"),
        (json!({"prompt": "x", "grammar": "start: undefined_rule"}), "does not compile"),
        (json!({"prompt": "x", "regex": "a", "choices": ["a"]}), "give one constraint"),
        (json!({"prompt": "x", "choices": []}), "choices must list"),
        (
            json!({"prompt": "x", "schema": {"type": "array", "uniqueItems": true}}),
            "Unimplemented keys: [\"uniqueItems\"]",
        ),
        (json!({"prompt": "Describe a movie as JSON.", "schema": cases[0]["schema"], "max_new_tokens": 4}), "ran out"),
    ];
    for (params, needle) in errors {
        let answer = conn.call("generate", params.clone());
        assert_eq!(answer["error"]["code"], json!(codes::INVALID_PARAMS), "{params}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{params}: {message}");
    }
    assert!(conn.call("ping", json!({}))["result"].is_object());

    // stctl --schema gives the daemon's bytes.
    let out = common::command(env!("CARGO_BIN_EXE_stctl"))
        .args(["--daemon-only", "--socket", &format!("unix:{}", d.socket.display())])
        .args(["generate", cases[3]["prompt"].as_str().unwrap(), "--max-new-tokens", "200"])
        .args(["--schema", &cases[3]["schema"].to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", answers[3]["text"].as_str().unwrap()));
    eprintln!("structured: {} constrained answers valid, daemon = direct; {report}", answers.len());
}
