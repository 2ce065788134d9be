//! Structured output: 200 answers over 20 JSON Schemas (nested objects, arrays, enums, bounded
//! numbers, patterns, nullable fields, constants, anyOf; ten prompts each), 10 regexes, 10 choice
//! lists and a Lark grammar, through the daemon (concurrent clients, so batched), again from the
//! cache, after a restart with one thread, and in direct mode. Every answer satisfies its
//! constraint (checked by independent validators: Python's `jsonschema`, `re`), all give the same
//! bytes, the constraint is part of the cache key, and a constraint that does not compile or
//! matches nothing, two constraints at once, or too few tokens are clear errors while the daemon
//! serves on.

mod common;

use serde_json::{json, Value};
use steadytext::core::validate::ToRequest;
use steadytext::protocol::{codes, GenerateParams};
use steadytext::service::GenerationService;

use common::Daemon;

/// Framings put before each schema's prompt: ten prompts per schema.
const FRAMINGS: [&str; 10] = [
    "",
    "Please answer briefly. ",
    "You are a data generator. ",
    "For a test fixture: ",
    "In JSON: ",
    "Quickly: ",
    "Imagine a realistic case. ",
    "Think of an example. ",
    "Fill in plausible values. ",
    "For a small shop's records: ",
];

/// Ten regexes, each with a prompt.
const REGEXES: [(&str, &str); 10] = [
    ("A phone number:", "[0-9]{3}-[0-9]{4}"),
    ("A date:", "[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    ("An email address:", "[a-z]{1,10}@[a-z]{1,10}\\.(com|org|net)"),
    ("A US zip code:", "[0-9]{5}"),
    ("A hex color:", "#[0-9a-f]{6}"),
    ("A time of day:", "([01][0-9]|2[0-3]):[0-5][0-9]"),
    ("Is the sky green? Answer and say why.", "(Yes|No), because [a-z ]{5,40}\\."),
    ("An IPv4 address:", "[0-9]{1,3}(\\.[0-9]{1,3}){3}"),
    ("A person's full name:", "[A-Z][a-z]{2,12} [A-Z][a-z]{2,12}"),
    ("A price:", "\\$[0-9]{1,4}\\.[0-9]{2}"),
];

/// Ten choice lists, each with a prompt.
fn choice_cases() -> Vec<Value> {
    [
        ("Pick a primary color.", vec!["red", "yellow", "blue"]),
        ("What size is an elephant?", vec!["small", "medium", "large"]),
        ("The sentiment of 'I love it':", vec!["positive", "negative", "neutral"]),
        ("The day after Monday:", vec!["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
        ("Is fire hot?", vec!["true", "false"]),
        ("Which animal barks?", vec!["cat", "dog", "bird"]),
        ("Which planet do we live on?", vec!["Mercury", "Venus", "Earth", "Mars"]),
        ("Where does the sun rise?", vec!["north", "south", "east", "west"]),
        ("A systems programming language:", vec!["Python", "Rust", "Go"]),
        ("Quiz: 2 + 2 = ? A) 3 B) 4 C) 5 D) 6. Answer:", vec!["A", "B", "C", "D"]),
    ]
    .into_iter()
    .map(|(prompt, choices)| json!({"prompt": prompt, "choices": choices, "max_new_tokens": 8}))
    .collect()
}

/// The requests: each of the 20 schemas of `tests/structured/schemas.json` under ten framings,
/// ten regexes, ten choice lists, then a Lark grammar (last).
fn cases() -> Vec<Value> {
    let schemas: Vec<Value> = serde_json::from_str(include_str!("structured/schemas.json")).unwrap();
    let mut cases: Vec<Value> = FRAMINGS
        .iter()
        .flat_map(|framing| {
            schemas.iter().map(move |c| {
                json!({"prompt": format!("{framing}{}", c["prompt"].as_str().unwrap()), "schema": c["schema"],
                       "max_new_tokens": 400})
            })
        })
        .collect();
    cases.extend(REGEXES.iter().map(|(p, re)| json!({"prompt": p, "regex": re, "max_new_tokens": 30})));
    cases.extend(choice_cases());
    cases.push(json!({"prompt": "Three fruits, comma-separated.", "max_new_tokens": 40,
                      "grammar": "start: item \",\" item \",\" item\nitem: /[a-z]{1,10}/"}));
    cases
}

/// Every answer of `cases` from the daemon `d`, asked on eight connections at once (so decode
/// steps batch); an error fails the test.
fn answers(d: &Daemon, cases: &[Value]) -> Vec<Value> {
    const CLIENTS: usize = 8;
    let mut answers = vec![Value::Null; cases.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|k| {
                scope.spawn(move || {
                    let mut conn = d.connect();
                    (k..cases.len())
                        .step_by(CLIENTS)
                        .map(|i| {
                            let answer = conn.call("generate", cases[i].clone());
                            assert!(answer["error"].is_null(), "{}: {answer}", cases[i]);
                            (i, answer["result"].clone())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for (i, a) in w.join().unwrap() {
                answers[i] = a;
            }
        }
    });
    answers
}

/// Objects left open, arrays of enum values and integers without bounds (as real clients send
/// them): on the shared model, every one of 20 such schemas gives valid, closed JSON within 96
/// tokens (objects are closed, enum arrays and integers bounded: see `Constraint::schema`), and a
/// budget that still runs out says which part never closed, with its own error code.
/// Checks every answer against its constraint with independent validators (Python's jsonschema,
/// re.fullmatch, membership: tests/structured/validate.py); what they report.
fn validate_externally(cases: &[Value], answers: &[Value]) -> String {
    let checked: Vec<Value> = cases.iter().zip(answers).map(|(p, a)| json!({"params": p, "text": a["text"]})).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&checked).unwrap()).unwrap();
    let python = common::venv_python("tests/python/requirements.txt");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/structured/validate.py");
    let out = std::process::Command::new(python).arg(script).arg(file.path()).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    report
}

#[test]
fn schemas_left_open_give_closed_json_within_a_small_budget() {
    let cases: Vec<Value> = serde_json::from_str(include_str!("structured/open_schemas.json")).unwrap();
    let cases: Vec<Value> =
        cases.iter().map(|c| json!({"prompt": c["prompt"], "schema": c["schema"], "max_new_tokens": 96})).collect();
    assert_eq!(cases.len(), 20);
    let d = Daemon::socket_activated("", &[]);
    let answers = answers(&d, &cases);
    validate_externally(&cases, &answers);
    let short = json!({"prompt": "Numbers as JSON.", "max_new_tokens": 12,
                       "schema": {"type": "object", "properties": {"n": {"type": "array", "items": {"type": "number"}}}}});
    let answer = d.connect().call("generate", short);
    assert_eq!(answer["error"]["code"], json!(codes::OUTPUT_INCOMPLETE), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("never closed") && message.contains("$.n"), "{message}");
}

fn bytes(answer: &Value) -> (Value, Value) {
    (answer["text"].clone(), answer["token_ids"].clone())
}

#[test]
fn every_answer_satisfies_its_constraint_alike_in_daemon_and_direct_mode() {
    let cases = cases();
    assert_eq!(cases.len(), 221);
    // The fused (onnxruntime-genai layout) model: it passes the batch-invariance probe, so the
    // concurrent requests share decode steps (the shared model runs them one at a time).
    let fused = common::fused_models().join("SmolLM2-135M-Instruct-fused-acc4");
    let model = format!("generation_model = {:?}\n", fused.display().to_string());
    let d = Daemon::socket_activated(&model, &[]);
    let mut conn = d.connect();
    let answers = answers(&d, &cases);

    // Repeats: every answer again, from the cache, the same bytes.
    let again = self::answers(&d, &cases);
    for ((params, first), second) in cases.iter().zip(&answers).zip(&again) {
        assert_eq!(bytes(second), bytes(first), "{params}: a repeat differs");
        assert_eq!(second["cached"], true, "{params}");
    }

    // A restarted daemon (empty cache) with one intra-op thread: every eighth request (schemas,
    // regexes and choices alike), the same bytes.
    let sample: Vec<usize> = (0..cases.len()).step_by(8).collect();
    {
        let one_thread = Daemon::socket_activated(&format!("{model}intra_threads = 1\n"), &[]);
        let subset: Vec<Value> = sample.iter().map(|&i| cases[i].clone()).collect();
        for (&i, answer) in sample.iter().zip(self::answers(&one_thread, &subset)) {
            assert_eq!(answer["cached"], false);
            assert_eq!(bytes(&answer), bytes(&answers[i]), "{}: restarted with 1 thread, differs", cases[i]);
        }
    }

    // Direct mode (the engine in this process, 2 threads): every sixteenth request, the same bytes.
    let mut config = common::config(2);
    config.generation_model = fused.display().to_string();
    let mut service = GenerationService::load(&config, None).unwrap();
    for (params, daemon) in cases.iter().zip(&answers).step_by(16) {
        let request = serde_json::from_value::<GenerateParams>(params.clone()).unwrap().to_request(&config).unwrap();
        let direct = service.run(&request, &mut |_| true).unwrap();
        assert_eq!(
            (json!(direct.generation.text), json!(direct.generation.token_ids)),
            bytes(daemon),
            "{params}: direct mode differs from the daemon"
        );
    }

    // Every answer checked by independent validators.
    let report = validate_externally(&cases, &answers);
    let grammar = answers.last().unwrap()["text"].as_str().unwrap();
    let items: Vec<&str> = grammar.split(',').collect();
    assert!(
        items.len() == 3
            && items.iter().all(|i| (1..=10).contains(&i.len()) && i.chars().all(|c| c.is_ascii_lowercase())),
        "{grammar:?}"
    );

    // The constraint is part of the cache key: other choices are not a hit.
    let choices = &cases[210];
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
        (json!({"prompt": "x", "regex": "[^\\s\\S]"}), "matches no text at all"),
        (
            json!({"prompt": "x", "schema": {"type": "array", "uniqueItems": true}}),
            "Unimplemented keys: [\"uniqueItems\"]",
        ),
        (json!({"prompt": "Describe a movie as JSON.", "schema": cases[0]["schema"], "max_new_tokens": 4}), "ran out"),
    ];
    for (params, needle) in errors {
        let answer = conn.call("generate", params.clone());
        // A budget that runs out is no invalid request: it has its own code.
        let code = if needle == "ran out" { codes::OUTPUT_INCOMPLETE } else { codes::INVALID_PARAMS };
        assert_eq!(answer["error"]["code"], json!(code), "{params}: {answer}");
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
