//! The shared result cache: generations and embeddings keyed by a hash of everything that
//! determines the answer, with frecency eviction and crash-safe `rkyv` snapshots.

pub mod frecency;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::CacheConfig;
use crate::engine::generate::{FinishReason, GenerateRequest};
use crate::engine::ModelInfo;
use crate::error::Result;
use crate::protocol::GenerateResult;
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

/// The key of one text's embedding.
pub fn embedding_key(model_digest: &str, text: &str) -> Key {
    key("embed", model_digest, text.as_bytes())
}

/// A cached generation.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedGeneration {
    /// The model digest it belongs to.
    pub model_digest: Arc<str>,
    /// Generated text.
    pub text: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// A cached embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEmbedding {
    /// The model digest it belongs to.
    pub model_digest: Arc<str>,
    /// The vector.
    pub vector: Vec<f32>,
}

const FINISH_CODES: [FinishReason; 4] =
    [FinishReason::Eos, FinishReason::Length, FinishReason::Stop, FinishReason::Context];

fn finish_code(r: FinishReason) -> u8 {
    FINISH_CODES.iter().position(|x| *x == r).expect("listed") as u8
}

/// Facts about the last snapshot written or loaded.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// File path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Creation time, ms since the epoch.
    pub created_unix_ms: u64,
}

/// Both caches, their limits and snapshot bookkeeping.
pub struct Cache {
    /// Generations.
    pub generation: FrecencyMap<Key, CachedGeneration>,
    /// Embeddings.
    pub embedding: FrecencyMap<Key, CachedEmbedding>,
    dir: Option<PathBuf>,
    last_snapshot: Option<SnapshotInfo>,
    dirty: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Cache {
    /// An empty cache with the configured limits, persisting into `dir` (None: memory only).
    pub fn new(config: &CacheConfig, dir: Option<PathBuf>) -> Self {
        let mb = |v: usize| v.saturating_mul(1024 * 1024);
        Cache {
            generation: FrecencyMap::new(config.generation_capacity, mb(config.generation_max_size_mb)),
            embedding: FrecencyMap::new(config.embedding_capacity, mb(config.embedding_max_size_mb)),
            dir,
            last_snapshot: None,
            dirty: false,
        }
    }

    /// Whether entries were added or removed since the last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Looks a generation up.
    pub fn get_generation(&mut self, key: &Key) -> Option<CachedGeneration> {
        self.generation.get(key).cloned()
    }

    /// Stores a generation.
    pub fn put_generation(&mut self, key: Key, value: CachedGeneration) {
        let size = ENTRY_OVERHEAD + value.text.len() + 4 * value.token_ids.len();
        self.generation.insert(key, value, size);
        self.dirty = true;
    }

    /// Looks an embedding up.
    pub fn get_embedding(&mut self, key: &Key) -> Option<Vec<f32>> {
        self.embedding.get(key).map(|e| e.vector.clone())
    }

    /// Stores an embedding.
    pub fn put_embedding(&mut self, key: Key, value: CachedEmbedding) {
        let size = ENTRY_OVERHEAD + 4 * value.vector.len();
        self.embedding.insert(key, value, size);
        self.dirty = true;
    }

    /// Empties one cache (`generation`, `embedding`) or both (`None`).
    pub fn clear(&mut self, which: Option<&str>) -> std::result::Result<(), String> {
        match which {
            None => {
                self.generation.clear();
                self.embedding.clear();
            }
            Some("generation") => self.generation.clear(),
            Some("embedding") => self.embedding.clear(),
            Some(other) => return Err(format!("unknown cache {other:?}: use generation or embedding")),
        }
        self.dirty = true;
        Ok(())
    }

    /// Entries, bytes, hits, misses, hit rate, last snapshot.
    pub fn stats(&self) -> Value {
        fn one<V>(m: &FrecencyMap<Key, V>) -> Value {
            let c = m.counters;
            let lookups = c.hits + c.misses;
            json!({
                "entries": m.len(),
                "bytes": m.bytes(),
                "hits": c.hits,
                "misses": c.misses,
                "evictions": c.evictions,
                "hit_rate": if lookups == 0 { 0.0 } else { c.hits as f64 / lookups as f64 },
            })
        }
        json!({
            "generation": one(&self.generation),
            "embedding": one(&self.embedding),
            "dir": self.dir,
            "last_snapshot": self.last_snapshot,
        })
    }

    /// The snapshot payload of the current contents.
    pub fn to_snapshot(&self) -> SnapshotData {
        let mut models: Vec<String> = Vec::new();
        let mut index: HashMap<Arc<str>, u32> = HashMap::new();
        let mut model_index = |d: &Arc<str>| {
            *index.entry(d.clone()).or_insert_with(|| {
                models.push(d.to_string());
                models.len() as u32 - 1
            })
        };
        let generation = self
            .generation
            .iter()
            .map(|(k, e)| GenerationRecord {
                key: *k,
                model: model_index(&e.value.model_digest),
                hits: e.hits,
                last_used: e.last_used,
                text: e.value.text.clone(),
                token_ids: e.value.token_ids.clone(),
                prompt_tokens: e.value.prompt_tokens as u32,
                finish_reason: finish_code(e.value.finish_reason),
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
                vector: e.value.vector.clone(),
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
    pub fn begin_snapshot(&mut self) -> Option<(PathBuf, SnapshotData)> {
        let dir = self.dir.clone()?;
        self.dirty = false;
        Some((dir, self.to_snapshot()))
    }

    /// Writes what [`Cache::begin_snapshot`] returned; `finish` gets the outcome.
    pub fn write_snapshot(
        taken: Option<(PathBuf, SnapshotData)>,
        finish: impl FnOnce(Option<&SnapshotInfo>),
    ) -> Result<Option<SnapshotInfo>> {
        let Some((dir, data)) = taken else { return Ok(None) };
        match snapshot::write(&dir, &data) {
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
        let hit = self.get_generation(&generation_key(&info.digest, request))?;
        Some(GenerateResult {
            text: hit.text,
            token_ids: hit.token_ids,
            prompt_tokens: hit.prompt_tokens,
            finish_reason: hit.finish_reason,
            model: info.name.clone(),
            model_digest: info.digest.clone(),
            cached: true,
        })
    }

    /// Stores a fresh answer.
    pub fn store_generation(&mut self, request: &GenerateRequest, result: &GenerateResult) {
        let value = CachedGeneration {
            model_digest: Arc::from(result.model_digest.as_str()),
            text: result.text.clone(),
            token_ids: result.token_ids.clone(),
            prompt_tokens: result.prompt_tokens,
            finish_reason: result.finish_reason,
        };
        self.put_generation(generation_key(&result.model_digest, request), value);
    }

    /// Cached vectors for `texts` (None where missing).
    pub fn lookup_embeddings(&mut self, model_digest: &str, texts: &[String]) -> Vec<Option<Vec<f32>>> {
        texts.iter().map(|t| self.get_embedding(&embedding_key(model_digest, t))).collect()
    }

    /// Stores fresh vectors.
    pub fn store_embeddings(&mut self, model_digest: &str, texts: &[String], vectors: &[Vec<f32>]) {
        let digest: Arc<str> = Arc::from(model_digest);
        for (t, v) in texts.iter().zip(vectors) {
            self.put_embedding(
                embedding_key(model_digest, t),
                CachedEmbedding { model_digest: digest.clone(), vector: v.clone() },
            );
        }
    }

    /// Fills the cache from the newest valid snapshot of its directory. With `keep`, entries of
    /// other model digests are dropped. Returns the number of entries loaded.
    pub fn load(&mut self, keep: Option<&[&str]>) -> usize {
        let Some(dir) = self.dir.clone() else { return 0 };
        let started = Instant::now();
        let Some((path, loaded)) = snapshot::load_newest(&dir) else { return 0 };
        let data = loaded.data();
        let models: Vec<Option<Arc<str>>> = data
            .models
            .iter()
            .map(|d| {
                let d = d.as_str();
                (keep.is_none_or(|k| k.contains(&d))).then(|| Arc::from(d))
            })
            .collect();
        let model = |i: u32| models.get(i as usize).cloned().flatten();
        let mut count = 0;
        self.generation.reserve(data.generation.len());
        self.embedding.reserve(data.embedding.len());
        for r in data.generation.iter() {
            let (Some(digest), Some(&finish_reason)) =
                (model(r.model.to_native()), FINISH_CODES.get(r.finish_reason as usize))
            else {
                continue;
            };
            let value = CachedGeneration {
                model_digest: digest,
                text: r.text.as_str().to_string(),
                token_ids: r.token_ids.iter().map(|t| t.to_native()).collect(),
                prompt_tokens: r.prompt_tokens.to_native() as usize,
                finish_reason,
            };
            let size = ENTRY_OVERHEAD + value.text.len() + 4 * value.token_ids.len();
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
                    value: CachedEmbedding { model_digest: digest, vector },
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

/// An embedding batch split into cached vectors and texts still to compute.
pub struct EmbedPlan {
    found: Vec<Option<Vec<f32>>>,
    /// Texts the cache lacks, in order (duplicates kept once).
    pub missing: Vec<String>,
}

impl EmbedPlan {
    /// Looks every text up (with no cache, everything is missing).
    pub fn new(cache: Option<&mut Cache>, model_digest: &str, texts: &[String]) -> Self {
        let found = match cache {
            Some(c) => c.lookup_embeddings(model_digest, texts),
            None => vec![None; texts.len()],
        };
        let mut missing: Vec<String> = Vec::new();
        for (t, f) in texts.iter().zip(&found) {
            if f.is_none() && !missing.contains(t) {
                missing.push(t.clone());
            }
        }
        EmbedPlan { found, missing }
    }

    /// Whether every vector came from the cache.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Fills the gaps with `computed` (one vector per `missing` text), stores them, and returns
    /// one vector per original text.
    pub fn complete(
        self,
        computed: Vec<Vec<f32>>,
        cache: Option<&mut Cache>,
        model_digest: &str,
        texts: &[String],
    ) -> Vec<Vec<f32>> {
        if let Some(c) = cache {
            c.store_embeddings(model_digest, &self.missing, &computed);
        }
        let by_text: HashMap<&str, &Vec<f32>> = self.missing.iter().map(String::as_str).zip(&computed).collect();
        self.found
            .into_iter()
            .zip(texts)
            .map(|(f, t)| f.unwrap_or_else(|| by_text.get(t.as_str()).map(|v| (*v).clone()).unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampler::Sampling;

    fn request(prompt: &str) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            seed: 42,
            max_new_tokens: 8,
            stop: vec![],
            sampling: Sampling::default(),
        }
    }

    fn generation(digest: &str, text: &str) -> CachedGeneration {
        CachedGeneration {
            model_digest: Arc::from(digest),
            text: text.into(),
            token_ids: vec![1, 2],
            prompt_tokens: 5,
            finish_reason: FinishReason::Length,
        }
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
        assert_ne!(embedding_key("d", "p"), embedding_key("e", "p"));
    }

    #[test]
    fn survives_a_snapshot_and_drops_other_models() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig::default();
        let mut cache = Cache::new(&config, Some(dir.path().to_path_buf()));
        let (a, b) = (generation_key("A", &request("x")), generation_key("B", &request("x")));
        cache.put_generation(a, generation("A", "from A"));
        cache.put_generation(b, generation("B", "from B"));
        let e = embedding_key("A", "t");
        cache.put_embedding(e, CachedEmbedding { model_digest: Arc::from("A"), vector: vec![0.1, f32::EPSILON] });
        cache.snapshot().unwrap();

        let mut all = Cache::new(&config, Some(dir.path().to_path_buf()));
        assert_eq!(all.load(None), 3);
        assert_eq!(all.get_generation(&a).unwrap().text, "from A");
        assert_eq!(all.get_embedding(&e).unwrap(), vec![0.1, f32::EPSILON]);

        let mut only_a = Cache::new(&config, Some(dir.path().to_path_buf()));
        assert_eq!(only_a.load(Some(&["A"])), 2);
        assert!(only_a.get_generation(&b).is_none(), "entries of an unloaded model are dropped");
    }

    #[test]
    fn clear_and_stats() {
        let mut cache = Cache::new(&CacheConfig::default(), None);
        let k = embedding_key("A", "t");
        cache.put_embedding(k, CachedEmbedding { model_digest: Arc::from("A"), vector: vec![1.0] });
        assert!(cache.get_embedding(&k).is_some());
        assert!(cache.get_embedding(&embedding_key("A", "u")).is_none());
        let s = cache.stats();
        assert_eq!(s["embedding"]["hit_rate"], 0.5);
        assert!(cache.clear(Some("nope")).is_err());
        cache.clear(Some("embedding")).unwrap();
        assert_eq!(cache.stats()["embedding"]["entries"], 0);
    }
}
