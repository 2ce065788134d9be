//! Embedding modes and prompts (the sentence-transformers convention of
//! `config_sentence_transformers.json`), and Matryoshka `dimensions`: a mode's vector is the
//! vector of its prompt followed by the text, bit for bit, in the daemon and in direct mode; modes
//! are cached apart; an unknown mode is a clear error; `dimensions` truncates and re-normalizes.

mod common;

use std::path::Path;

use serde_json::{json, Value};
use steadytext::protocol::{codes, EmbedParams};

use common::Daemon;

/// The shared MiniLM with query and passage prompts (and `default_prompt_name` when given), in a
/// folder of `dir`.
fn prompted_model(dir: &Path, default: Option<&str>) -> std::path::PathBuf {
    let model = dir.join("MiniLM-prompted");
    std::fs::create_dir(&model).unwrap();
    let source = common::models_dir().join("all-MiniLM-L6-v2");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "config_sentence_transformers.json" {
            std::os::unix::fs::symlink(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    let config = json!({"prompts": {"query": "query: ", "passage": "passage: ", "title": "Title of: "},
                        "default_prompt_name": default});
    std::fs::write(model.join("config_sentence_transformers.json"), config.to_string()).unwrap();
    model
}

fn vectors(answer: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(answer["result"]["embeddings"].clone()).unwrap_or_else(|_| panic!("{answer}"))
}

#[test]
fn a_mode_embeds_its_prompt_before_the_text_in_daemon_and_direct_mode() {
    let dir = tempfile::tempdir().unwrap();
    let model = prompted_model(dir.path(), None);
    let d = Daemon::socket_activated(&format!("embedding_model = {:?}\n", model.display().to_string()), &[]);
    let mut c = d.connect();
    let texts = ["How do rivers form?", "Rivers form where rain gathers."];
    let embed = |c: &mut common::Conn, params: Value| c.call("embed", params);

    let query = embed(&mut c, json!({"texts": texts, "mode": "query"}));
    let spelled = embed(&mut c, json!({"texts": texts.map(|t| format!("query: {t}"))}));
    assert_eq!(vectors(&query), vectors(&spelled), "mode query = its prompt before the text");
    assert_eq!(spelled["result"]["cached"], json!(2), "the same model texts: the same cache entries");
    let passage = embed(&mut c, json!({"texts": texts, "mode": "passage"}));
    let plain = embed(&mut c, json!({"texts": texts}));
    assert_eq!(passage["result"]["cached"], json!(0), "another mode, other cache entries");
    assert_ne!(vectors(&query), vectors(&passage));
    assert_ne!(vectors(&plain), vectors(&passage));
    let title = embed(&mut c, json!({"texts": texts, "mode": "title"}));
    assert_eq!(vectors(&title), vectors(&embed(&mut c, json!({"texts": texts.map(|t| format!("Title of: {t}"))}))));

    let unknown = embed(&mut c, json!({"texts": texts, "mode": "summary"}));
    assert_eq!(unknown["error"]["code"], json!(codes::INVALID_PARAMS), "{unknown}");
    let message = unknown["error"]["message"].as_str().unwrap();
    assert!(message.contains("no prompt named \"summary\"") && message.contains("query, passage"), "{message}");

    // Matryoshka: the first N dimensions of the full vector, re-normalized.
    let short = embed(&mut c, json!({"texts": texts, "mode": "query", "dimensions": 64}));
    for (s, full) in vectors(&short).iter().zip(vectors(&query)) {
        let mut expected = full[..64].to_vec();
        steadytext::engine::embed::l2_normalize(&mut expected);
        assert_eq!(*s, expected);
    }
    let too_many = embed(&mut c, json!({"texts": texts, "dimensions": 385}));
    assert!(too_many["error"]["message"].as_str().unwrap().contains("between 1 and the model's 384"), "{too_many}");

    // Direct mode gives the same bits.
    let mut config = common::config(0);
    config.embedding_model = model.display().to_string();
    let params =
        EmbedParams { texts: texts.map(String::from).to_vec(), mode: Some("query".into()), ..Default::default() };
    let direct = steadytext::direct::embed(&config, &params).unwrap();
    assert_eq!(direct.embeddings, vectors(&query), "direct mode differs from the daemon");

    // A model without prompts: query and passage put nothing before the text.
    let mut config = common::config(0);
    config.embedding_model = "all-MiniLM-L6-v2".into();
    let bare = |mode: Option<&str>| {
        let p = EmbedParams { texts: vec![texts[0].into()], mode: mode.map(String::from), ..Default::default() };
        steadytext::direct::embed(&config, &p).unwrap().embeddings
    };
    assert_eq!(bare(Some("query")), bare(None));
    assert_eq!(bare(Some("passage")), bare(None));
}

#[test]
fn the_default_prompt_applies_when_no_mode_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let model = prompted_model(dir.path(), Some("passage"));
    let mut config = common::config(0);
    config.embedding_model = model.display().to_string();
    let run = |texts: Vec<String>, mode: Option<&str>| {
        let p = EmbedParams { texts, mode: mode.map(String::from), ..Default::default() };
        steadytext::direct::embed(&config, &p).unwrap().embeddings
    };
    let plain = run(vec!["a river".into()], None);
    assert_eq!(plain, run(vec!["a river".into()], Some("passage")));
    // The same weights without prompts, given the prompt spelled out.
    let mut bare = common::config(0);
    bare.embedding_model = "all-MiniLM-L6-v2".into();
    let spelled = EmbedParams { texts: vec!["passage: a river".into()], ..Default::default() };
    assert_eq!(plain, steadytext::direct::embed(&bare, &spelled).unwrap().embeddings);
    assert_ne!(plain, run(vec!["a river".into()], Some("query")));
}
