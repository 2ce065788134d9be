//! The shared result cache: generations and embeddings keyed by a hash of everything that
//! determines the answer, with frecency eviction and crash-safe `rkyv` snapshots. [`SharedCache`]
//! holds the one look-up / compute / store routine that the daemon and direct mode both use.

mod flow;
pub(crate) mod frecency;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use flow::SharedCache;

use crate::config::CacheConfig;
use crate::engine::fingerprint::Fingerprint;
use crate::engine::generate::{FinishReason, GenerateRequest, Generation};
use crate::engine::logprobs::TokenLogprob;
use crate::engine::tools::CallSyntax;
use crate::error::Result;
use crate::model::ModelInfo;
use crate::protocol::{CacheKind, CacheKindStats, CacheStats, GenerateResult, SnapshotInfo};
use frecency::{Entry, FrecencyMap};
use snapshot::{EmbeddingRecord, GenerationRecord, SnapshotData};

/// A cache key: sha256 of the key material.
pub type Key = [u8; 32];

/// Bump when what a key covers or what an answer means changes: old entries then never match.
const KEY_VERSION: &str = "steadytext-cache-v1";

/// Fixed bytes charged per entry on top of its payload (key, bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

fn key(method: &str, model_digest: &str, material: &[u8]) -> Key {
    let mut h = Sha256::new();
    for part in [KEY_VERSION.as_bytes(), method.as_bytes(), model_digest.as_bytes()] {
        h.update(part);
        h.update(b"\0");
    }
    h.update(material);
    h.finalize().into()
}

/// The key of a generation: model digest and the whole normalized request.
pub fn generation_key(model_digest: &str, request: &GenerateRequest) -> Key {
    key("generate", model_digest, &serde_json::to_vec(request).expect("a request always serializes"))
}

/// A load balancer's route key for a generation: the hash the cache key takes of the normalized
/// request, scoped by the requested model name instead of its digest (which clients do not
/// know), as 32 hex digits. Equal requests get equal keys whatever their JSON spelling.
pub fn generation_route_key(model: Option<&str>, request: &GenerateRequest) -> String {
    let material = serde_json::to_vec(request).expect("a request always serializes");
    hex::encode(&key("generate", model.unwrap_or(""), &material)[..16])
}

/// A load balancer's route key for an embedding request in `mode` (see [`generation_route_key`]).
pub fn embedding_route_key(model: Option<&str>, mode: Option<&str>, texts: &[String]) -> String {
    let mut material: Vec<u8> = mode.map(|m| format!("mode:{m}\0").into_bytes()).unwrap_or_default();
    material.extend(texts.iter().flat_map(|t| t.as_bytes().iter().copied().chain([0])));
    hex::encode(&key("embed", model.unwrap_or(""), &material)[..16])
}

/// A load balancer's route key for a rerank: its query's (a fleet sends the same query to the
/// daemon holding its documents' judgements), as the route key of the query's judgement alone.
pub fn rerank_route_key(model: Option<&str>, query: &str) -> String {
    generation_route_key(model, &crate::engine::rerank::judgement(query, ""))
}

/// The key of one text's embedding.
pub fn embedding_key(model_digest: &str, text: &str) -> Key {
    key("embed", model_digest, text.as_bytes())
}

/// A cached answer and the digest of the model that gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    /// The model digest it belongs to.
    pub model_digest: Arc<str>,
    /// The answer: a [`Generation`] or an embedding vector.
    pub value: T,
}

/// Finish reasons by their snapshot code (new ones only appended: a build that does not know a
/// code skips its entries).
const FINISH_CODES: [FinishReason; 5] =
    [FinishReason::Eos, FinishReason::Length, FinishReason::Stop, FinishReason::Context, FinishReason::ToolCalls];

fn finish_code(r: FinishReason) -> u8 {
    FINISH_CODES.iter().position(|x| *x == r).expect("listed") as u8
}

fn generation_size(g: &Generation) -> usize {
    let token = |t: &TokenLogprob| 32 + t.token.len();
    let logprobs: usize = g
        .logprobs
        .iter()
        .flatten()
        .map(|s| token(&s.chosen) + s.top_logprobs.iter().chain(&s.followed).map(token).sum::<usize>())
        .sum();
    let calls: usize = g.tool_calls.iter().map(|c| 48 + c.id.len() + c.name.len() + c.arguments.len()).sum();
    ENTRY_OVERHEAD + g.text.len() + 4 * g.token_ids.len() + logprobs + calls
}

/// Both caches, their limits and snapshot bookkeeping.
pub struct Cache {
    /// Generations.
    pub generation: FrecencyMap<Key, Stored<Generation>>,
    /// Embeddings.
    pub embedding: FrecencyMap<Key, Stored<Vec<f32>>>,
    dir: Option<PathBuf>,
    last_snapshot: Option<SnapshotInfo>,
    dirty: bool,
    /// The engine fingerprint: part of every key, and of the snapshot header.
    engine: Fingerprint,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Cache {
    /// An empty cache with the configured limits for answers of the engine `engine`,
    /// persisting into `dir` (None: memory only).
    pub fn new(config: &CacheConfig, dir: Option<PathBuf>, engine: Fingerprint) -> Self {
        let mb = |v: usize| v.saturating_mul(1024 * 1024);
        Cache {
            generation: FrecencyMap::new(config.generation_capacity, mb(config.generation_max_size_mb)),
            embedding: FrecencyMap::new(config.embedding_capacity, mb(config.embedding_max_size_mb)),
            dir,
            last_snapshot: None,
            dirty: false,
            engine,
        }
    }

    /// Direct mode's per-user cache, persisting into `[cache] dir`, else
    /// `$XDG_CACHE_HOME/steadytext` (`~/.cache/steadytext`), loaded from its newest snapshot.
    pub fn for_user(config: &CacheConfig, engine: Fingerprint) -> Self {
        let dir = config.dir.clone().or_else(|| dirs::cache_dir().map(|d| d.join("steadytext")));
        let mut cache = Cache::new(config, dir, engine);
        cache.load();
        cache
    }

    /// What keys name besides the request: the model and the engine.
    fn scope(&self, model_digest: &str) -> String {
        format!("{model_digest} {}", self.engine.id)
    }

    /// Whether entries were added or removed since the last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Looks a generation up.
    pub fn get_generation(&mut self, key: &Key) -> Option<Generation> {
        self.generation.get(key).map(|s| s.value.clone())
    }

    /// Stores a generation.
    pub fn put_generation(&mut self, key: Key, value: Stored<Generation>) {
        let size = generation_size(&value.value);
        self.generation.insert(key, value, size);
        self.dirty = true;
    }

    /// Looks an embedding up.
    pub fn get_embedding(&mut self, key: &Key) -> Option<Vec<f32>> {
        self.embedding.get(key).map(|e| e.value.clone())
    }

    /// Stores an embedding.
    pub fn put_embedding(&mut self, key: Key, value: Stored<Vec<f32>>) {
        let size = ENTRY_OVERHEAD + 4 * value.value.len();
        self.embedding.insert(key, value, size);
        self.dirty = true;
    }

    /// Empties one cache or both (`None`).
    pub fn clear(&mut self, which: Option<CacheKind>) {
        match which {
            None => {
                self.generation.clear();
                self.embedding.clear();
            }
            Some(CacheKind::Generation) => self.generation.clear(),
            Some(CacheKind::Embedding) => self.embedding.clear(),
        }
        self.dirty = true;
    }

    /// Entries, bytes, hits, misses, hit rate, last snapshot.
    pub fn stats(&self) -> CacheStats {
        fn one<V>(m: &FrecencyMap<Key, V>) -> CacheKindStats {
            let c = m.counters;
            let lookups = c.hits + c.misses;
            CacheKindStats {
                entries: m.len(),
                bytes: m.bytes(),
                hits: c.hits,
                misses: c.misses,
                evictions: c.evictions,
                hit_rate: if lookups == 0 { 0.0 } else { c.hits as f64 / lookups as f64 },
            }
        }
        CacheStats {
            generation: one(&self.generation),
            embedding: one(&self.embedding),
            dir: self.dir.clone(),
            last_snapshot: self.last_snapshot.clone(),
        }
    }

    /// The snapshot payload of the current contents.
    pub fn to_snapshot(&self) -> SnapshotData {
        let mut models: Vec<String> = Vec::new();
        let mut index: std::collections::HashMap<Arc<str>, u32> = std::collections::HashMap::new();
        let mut model_index = |d: &Arc<str>| {
            *index.entry(d.clone()).or_insert_with(|| {
                models.push(d.to_string());
                models.len() as u32 - 1
            })
        };
        let generation = self
            .generation
            .iter()
            .map(|(k, e)| {
                let g = &e.value.value;
                GenerationRecord {
                    key: *k,
                    model: model_index(&e.value.model_digest),
                    hits: e.hits,
                    last_used: e.last_used,
                    text: g.text.clone(),
                    token_ids: g.token_ids.clone(),
                    prompt_tokens: g.prompt_tokens as u32,
                    finish_reason: finish_code(g.finish_reason),
                    logprobs: g.logprobs.clone(),
                }
            })
            .collect();
        let embedding = self
            .embedding
            .iter()
            .map(|(k, e)| EmbeddingRecord {
                key: *k,
                model: model_index(&e.value.model_digest),
                hits: e.hits,
                last_used: e.last_used,
                vector: e.value.value.clone(),
            })
            .collect();
        SnapshotData {
            created_unix_ms: now_ms(),
            models,
            generation_clock: self.generation.clock(),
            embedding_clock: self.embedding.clock(),
            generation,
            embedding,
        }
    }

    /// Writes a snapshot now (no-op without a directory).
    pub fn snapshot(&mut self) -> Result<Option<SnapshotInfo>> {
        Self::write_snapshot(self.begin_snapshot(), |done| self.finish_snapshot(done))
    }

    /// Copies the contents out for a snapshot (cheap next to the write, so a shared cache's lock
    /// is held only for this) and marks the cache clean.
    pub fn begin_snapshot(&mut self) -> Option<(PathBuf, SnapshotData, u64)> {
        let dir = self.dir.clone()?;
        self.dirty = false;
        Some((dir, self.to_snapshot(), self.engine.as_u64()))
    }

    /// Writes what [`Cache::begin_snapshot`] returned; `finish` gets the outcome.
    pub fn write_snapshot(
        taken: Option<(PathBuf, SnapshotData, u64)>,
        finish: impl FnOnce(Option<&SnapshotInfo>),
    ) -> Result<Option<SnapshotInfo>> {
        let Some((dir, data, engine)) = taken else { return Ok(None) };
        match snapshot::write(&dir, &data, engine) {
            Ok((path, bytes)) => {
                let info = SnapshotInfo { path, bytes, created_unix_ms: data.created_unix_ms };
                finish(Some(&info));
                Ok(Some(info))
            }
            Err(e) => {
                finish(None);
                Err(e)
            }
        }
    }

    /// Records a written snapshot, or marks the cache dirty again after a failed write.
    pub fn finish_snapshot(&mut self, written: Option<&SnapshotInfo>) {
        match written {
            Some(info) => self.last_snapshot = Some(info.clone()),
            None => self.dirty = true,
        }
    }

    /// A cached answer for `request` on the model `info`, marked `cached`.
    pub fn lookup_generation(&mut self, info: &ModelInfo, request: &GenerateRequest) -> Option<GenerateResult> {
        let generation = self.get_generation(&generation_key(&self.scope(&info.digest), request))?;
        Some(GenerateResult {
            generation,
            model: info.name.clone(),
            model_digest: info.digest.clone(),
            cached: true,
            prefix_tokens: 0,
            engine_fingerprint: String::new(),
        })
    }

    /// Stores a fresh answer.
    pub fn store_generation(&mut self, request: &GenerateRequest, result: &GenerateResult) {
        let value = Stored { model_digest: Arc::from(result.model_digest.as_str()), value: result.generation.clone() };
        self.put_generation(generation_key(&self.scope(&result.model_digest), request), value);
    }

    /// Cached vectors for `texts` (None where missing).
    pub fn lookup_embeddings(&mut self, model_digest: &str, texts: &[String]) -> Vec<Option<Vec<f32>>> {
        let scope = self.scope(model_digest);
        texts.iter().map(|t| self.get_embedding(&embedding_key(&scope, t))).collect()
    }

    /// Stores fresh vectors.
    pub fn store_embeddings(&mut self, model_digest: &str, texts: &[String], vectors: &[Vec<f32>]) {
        let digest: Arc<str> = Arc::from(model_digest);
        let scope = self.scope(model_digest);
        for (t, v) in texts.iter().zip(vectors) {
            self.put_embedding(embedding_key(&scope, t), Stored { model_digest: digest.clone(), value: v.clone() });
        }
    }

    /// Drops the entries of every model whose digest is not in `digests`.
    pub fn retain_models(&mut self, digests: &[&str]) {
        self.generation.retain(|s| digests.contains(&&*s.model_digest));
        self.embedding.retain(|s| digests.contains(&&*s.model_digest));
    }

    /// Fills the cache from the newest valid snapshot of its directory. Returns the number of
    /// entries loaded.
    pub fn load(&mut self) -> usize {
        let Some(dir) = self.dir.clone() else { return 0 };
        let started = Instant::now();
        let Some((path, loaded)) = snapshot::load_newest(&dir) else { return 0 };
        if loaded.engine() != self.engine.as_u64() {
            // Its keys name another engine: none of its answers could be served here.
            tracing::info!(path = %path.display(), engine = %self.engine.summary, "cache snapshot made by another engine (ONNX Runtime, provider or CPU class); starting empty");
            return 0;
        }
        let data = loaded.data();
        let models: Vec<Arc<str>> = data.models.iter().map(|d| Arc::from(d.as_str())).collect();
        let model = |i: u32| models.get(i as usize).cloned();
        let mut count = 0;
        self.generation.reserve(data.generation.len());
        self.embedding.reserve(data.embedding.len());
        for r in data.generation.iter() {
            let (Some(digest), Some(&finish_reason)) =
                (model(r.model.to_native()), FINISH_CODES.get(r.finish_reason as usize))
            else {
                continue;
            };
            let mut generation = Generation {
                text: r.text.as_str().to_string(),
                token_ids: r.token_ids.iter().map(|t| t.to_native()).collect(),
                prompt_tokens: r.prompt_tokens.to_native() as usize,
                finish_reason,
                logprobs: match rkyv::deserialize::<_, rkyv::rancor::Error>(&r.logprobs) {
                    Ok(logprobs) => logprobs,
                    Err(_) => continue,
                },
                tool_calls: Vec::new(),
            };
            // Tool calls are not stored: they are read again from the text, ids and all.
            if finish_reason == FinishReason::ToolCalls {
                match CallSyntax::of_answer(&generation.text) {
                    Some(syntax) => generation.read_tool_calls(syntax),
                    None => continue,
                }
            }
            let size = generation_size(&generation);
            let value = Stored { model_digest: digest, value: generation };
            self.generation
                .restore(r.key, Entry { value, hits: r.hits.to_native(), last_used: r.last_used.to_native(), size });
            count += 1;
        }
        for r in data.embedding.iter() {
            let Some(digest) = model(r.model.to_native()) else { continue };
            let vector: Vec<f32> = r.vector.iter().map(|f| f.to_native()).collect();
            let size = ENTRY_OVERHEAD + 4 * vector.len();
            self.embedding.restore(
                r.key,
                Entry {
                    value: Stored { model_digest: digest, value: vector },
                    hits: r.hits.to_native(),
                    last_used: r.last_used.to_native(),
                    size,
                },
            );
            count += 1;
        }
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(path = %path.display(), entries = count, bytes, load_ms = started.elapsed().as_secs_f64() * 1e3, "cache snapshot loaded");
        self.last_snapshot = Some(SnapshotInfo { path, bytes, created_unix_ms: data.created_unix_ms.to_native() });
        count
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The values of [`golden_keys_do_not_change`], computed at ee35bdd + the third wave's
    /// reliability commits (no key changed there).
    const GOLDEN_KEYS: [&str; 8] = [
        "c11289842d5775d1ef5137d91604e3d15395b95432de2fb6155aaf9c408cc055",
        "0e0ea5ba748dd53eef60d4a8ceb6059fa28804165043f5045ea3303feb12fe45",
        "1a4a99903ce632d9e46b74c6acc78934e5042581319a602efc12bcf36a1c5a40",
        "58205154a9ec27b24e7585ea792ca67f49e1cb23f7cb61ae5a1e458dcaaa731f",
        "73d97b3908aa6b1532bfcdf1759bd9cd",
        "e045e1d49b8ff073f447458054447f13",
        "2f512b6ef775ee64deca2cdc8dbf2b02",
        "239823445b2f6fd369fc75f485f395c2",
    ];

    /// An engine fingerprint for tests.
    pub(crate) fn test_engine() -> Fingerprint {
        Fingerprint { id: "00000000000000aa".into(), summary: "test engine".into() }
    }
    use crate::engine::constraint::Constraint;
    use crate::engine::sampler::Sampling;

    fn request(prompt: &str) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 42,
            max_new_tokens: 8,
            stop: vec![],
            sampling: Sampling::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        }
    }

    fn generation(digest: &str, text: &str) -> Stored<Generation> {
        let value = Generation {
            text: text.into(),
            token_ids: vec![1, 2],
            prompt_tokens: 5,
            finish_reason: FinishReason::Length,
            logprobs: None,
            tool_calls: Vec::new(),
        };
        Stored { model_digest: Arc::from(digest), value }
    }

    #[test]
    fn keys_cover_every_field() {
        let base = request("p");
        let k = generation_key("d", &base);
        assert_ne!(k, generation_key("e", &base));
        assert_ne!(k, generation_key("d", &GenerateRequest { seed: 1, ..base.clone() }));
        assert_ne!(k, generation_key("d", &GenerateRequest { max_new_tokens: 9, ..base.clone() }));
        assert_ne!(k, generation_key("d", &GenerateRequest { stop: vec!["x".into()], ..base.clone() }));
        assert_ne!(
            k,
            generation_key(
                "d",
                &GenerateRequest { sampling: Sampling { temperature: 0.5, ..Default::default() }, ..base.clone() }
            )
        );
        let constrained = |c| generation_key("d", &GenerateRequest { constraint: Some(c), ..base.clone() });
        let choices = constrained(Constraint::Choices(vec!["a".into()]));
        assert_ne!(k, choices);
        assert_ne!(choices, constrained(Constraint::Choices(vec!["b".into()])));
        assert_ne!(choices, constrained(Constraint::Regex("a".into())));
        let offered = |choice| {
            let tool =
                crate::engine::tools::Tool { name: "f".into(), description: None, parameters: serde_json::json!({}) };
            let tools = crate::engine::tools::ToolUse { tools: vec![tool], choice, parallel: true };
            generation_key("d", &GenerateRequest { tools: Some(tools), ..base.clone() })
        };
        let auto = offered(crate::engine::tools::ToolChoice::Auto);
        assert_ne!(k, auto);
        assert_ne!(auto, offered(crate::engine::tools::ToolChoice::Required));
        assert_ne!(embedding_key("d", "p"), embedding_key("e", "p"));
    }

    /// Cache keys are persisted in snapshots and route keys are hashed by load balancers: fixed
    /// requests must keep these exact values (a change needs a snapshot format bump and a note).
    #[test]
    fn golden_keys_do_not_change() {
        use crate::engine::generate::ChatMessage;
        use crate::engine::logprobs::LogprobsRequest;
        let plain = request("Write a haiku about the sea.");
        let varied = GenerateRequest {
            prompt: String::new(),
            messages: vec![ChatMessage::new("system", "Be terse."), ChatMessage::new("user", "Hi")],
            seed: 7,
            max_new_tokens: 64,
            stop: vec!["\n".into()],
            sampling: Sampling { temperature: 0.7, top_k: 40, top_p: 0.9 },
            constraint: Some(Constraint::Schema(serde_json::json!({"type": "object", "properties": {
                "a": {"type": "integer"}}, "additionalProperties": false}))),
            logprobs: Some(LogprobsRequest { top: 3, follow: vec!["yes".into()] }),
            ..request("")
        };
        let raw =
            GenerateRequest { raw: true, constraint: Some(Constraint::Regex("[0-9]+".into())), ..request("1, 2,") };
        let hex = |k: Key| hex::encode(k);
        let got = [
            hex(generation_key("sha256:abc 00000000000000aa", &plain)),
            hex(generation_key("sha256:abc 00000000000000aa", &varied)),
            hex(generation_key("sha256:abc 00000000000000aa", &raw)),
            hex(embedding_key("sha256:def 00000000000000aa", "The same text gives the same vector.")),
            generation_route_key(Some("SmolLM2-135M-Instruct"), &plain),
            generation_route_key(None, &varied),
            embedding_route_key(Some("all-MiniLM-L6-v2"), Some("query"), &["a".into(), "b".into()]),
            embedding_route_key(None, None, &["x".into()]),
        ];
        let pinned = GOLDEN_KEYS;
        assert_eq!(got, pinned, "a cache or route key changed");
    }

    /// A rerank's route key (stctl's, for a fleet) is its query's judgement's: pinned like the others
    /// (it changes with the judging prompt's version, as the judgements' cache keys do).
    #[test]
    fn the_rerank_route_key_does_not_change() {
        assert_eq!(crate::engine::rerank::PROMPT_VERSION, "yes-no-v2", "a new prompt: pin its route key below");
        assert_eq!(rerank_route_key(Some("SmolLM2-135M-Instruct"), "sea"), "a91306f41daa22957050864ba49324fc");
        assert_eq!(
            rerank_route_key(None, "sea"),
            generation_route_key(None, &crate::engine::rerank::judgement("sea", ""))
        );
    }

    #[test]
    fn survives_a_snapshot_and_drops_other_models() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig::default();
        let mut cache = Cache::new(&config, Some(dir.path().to_path_buf()), test_engine());
        let (a, b) = (generation_key("A", &request("x")), generation_key("B", &request("x")));
        cache.put_generation(a, generation("A", "from A"));
        cache.put_generation(b, generation("B", "from B"));
        // A tool-calling answer: its calls are read again from the text, ids and all.
        let called = generation_key("A", &request("call"));
        let mut calls =
            generation("A", "Looking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>");
        calls.value.read_tool_calls(CallSyntax::Hermes);
        assert_eq!(calls.value.finish_reason, FinishReason::ToolCalls);
        cache.put_generation(called, calls.clone());
        let e = embedding_key("A", "t");
        cache.put_embedding(e, Stored { model_digest: Arc::from("A"), value: vec![0.1, f32::EPSILON] });
        cache.snapshot().unwrap();

        let mut all = Cache::new(&config, Some(dir.path().to_path_buf()), test_engine());
        assert_eq!(all.load(), 4);
        assert_eq!(all.get_generation(&a).unwrap().text, "from A");
        assert_eq!(all.get_generation(&called).unwrap(), calls.value, "the same calls after a restart");
        assert_eq!(all.get_embedding(&e).unwrap(), vec![0.1, f32::EPSILON]);

        all.retain_models(&["A"]);
        assert!(all.get_generation(&b).is_none(), "entries of a model no longer served are dropped");
        assert_eq!(all.get_generation(&a).unwrap().text, "from A");
        assert_eq!(all.get_embedding(&e).unwrap(), vec![0.1, f32::EPSILON]);
    }

    #[test]
    fn answers_of_another_engine_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig::default();
        let info = ModelInfo { name: "m".into(), digest: "sha256:m".into(), dir: PathBuf::from("/m") };
        let result = GenerateResult {
            generation: generation("sha256:m", "from engine a").value,
            model: "m".into(),
            model_digest: "sha256:m".into(),
            cached: false,
            prefix_tokens: 0,
            engine_fingerprint: String::new(),
        };
        let mut a = Cache::new(&config, Some(dir.path().to_path_buf()), test_engine());
        a.store_generation(&request("x"), &result);
        a.store_embeddings("sha256:m", &["t".into()], &[vec![1.0]]);
        assert!(a.lookup_generation(&info, &request("x")).is_some());
        a.snapshot().unwrap();
        let other = Fingerprint { id: "00000000000000bb".into(), summary: "other engine".into() };
        // Same model, same request, another engine: a miss, in memory and from the snapshot.
        let mut b = Cache::new(&config, Some(dir.path().to_path_buf()), other.clone());
        b.store_generation(&request("y"), &result);
        assert_eq!(b.load(), 0, "a snapshot of another engine is not loaded");
        let mut b_mem = Cache::new(&config, None, other);
        b_mem.generation = std::mem::replace(&mut a.generation, FrecencyMap::new(1, 1 << 20));
        b_mem.embedding = std::mem::replace(&mut a.embedding, FrecencyMap::new(1, 1 << 20));
        assert_eq!(b_mem.embedding.len(), 1);
        assert!(b_mem.lookup_generation(&info, &request("x")).is_none());
        assert_eq!(b_mem.lookup_embeddings("sha256:m", &["t".into()]), vec![None]);
        let mut same = Cache::new(&config, Some(dir.path().to_path_buf()), test_engine());
        assert_eq!(same.load(), 2);
        assert_eq!(same.lookup_generation(&info, &request("x")).unwrap().generation.text, "from engine a");
    }

    #[test]
    fn clear_and_stats() {
        let mut cache = Cache::new(&CacheConfig::default(), None, test_engine());
        let k = embedding_key("A", "t");
        cache.put_embedding(k, Stored { model_digest: Arc::from("A"), value: vec![1.0] });
        assert!(cache.get_embedding(&k).is_some());
        assert!(cache.get_embedding(&embedding_key("A", "u")).is_none());
        let s = cache.stats();
        assert_eq!(s.embedding.hit_rate, 0.5);
        assert!(serde_json::from_str::<crate::protocol::CacheClearParams>(r#"{"cache": "nope"}"#).is_err());
        cache.clear(Some(CacheKind::Embedding));
        assert_eq!(cache.stats().embedding.entries, 0);
    }
}
