//! The one cache routine: look up, compute only what is missing, store. The daemon passes
//! computations that wait for its model workers; direct mode passes ones that run in-process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::{generation_key, Cache, Key};
use crate::engine::generate::GenerateRequest;
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::protocol::{CacheKind, CacheStats, EmbedResult, GenerateResult, SnapshotInfo};

/// Generations being computed, by cache key: later identical requests wait for the first one's
/// answer instead of running the model again.
type InFlight = Mutex<HashMap<Key, watch::Receiver<Option<GenerateResult>>>>;

/// A cache that tasks share (the daemon) or one process owns (direct mode); without a cache
/// (caching off) every routine computes, identical concurrent generations still only once.
#[derive(Default)]
pub struct SharedCache {
    cache: Option<Mutex<Cache>>,
    in_flight: InFlight,
}

/// Removes an in-flight entry when its computation ends or is dropped (cancelled): waiters then
/// see the channel close and compute (or find the cache) themselves.
struct InFlightEntry<'a> {
    map: &'a InFlight,
    key: Key,
    answer: watch::Sender<Option<GenerateResult>>,
}

impl Drop for InFlightEntry<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl SharedCache {
    /// Wraps `cache` (None: caching off).
    pub fn new(cache: Option<Cache>) -> Self {
        SharedCache { cache: cache.map(Mutex::new), in_flight: InFlight::default() }
    }

    fn lock(&self) -> Option<MutexGuard<'_, Cache>> {
        self.cache.as_ref().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `f` on the cache, if caching is on.
    pub fn with<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        self.lock().map(|mut c| f(&mut c))
    }

    /// Whether caching is on.
    pub fn is_enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// Hit/miss figures, or [`Error::CacheDisabled`].
    pub fn stats(&self) -> Result<CacheStats> {
        self.with(|c| c.stats()).ok_or(Error::CacheDisabled)
    }

    /// Empties one cache or both, or [`Error::CacheDisabled`].
    pub fn clear(&self, which: Option<CacheKind>) -> Result<()> {
        self.with(|c| c.clear(which)).ok_or(Error::CacheDisabled)
    }

    /// Writes a snapshot now; the contents are copied under the lock and written outside it.
    /// `Ok(None)` when the cache is off or has no folder.
    pub fn snapshot(&self) -> Result<Option<SnapshotInfo>> {
        let taken = self.with(Cache::begin_snapshot).flatten();
        Cache::write_snapshot(taken, |done| {
            self.with(|c| c.finish_snapshot(done));
        })
    }

    /// Writes a snapshot only when entries changed since the last one.
    pub fn snapshot_if_dirty(&self) -> Result<Option<SnapshotInfo>> {
        if self.with(|c| c.is_dirty()) != Some(true) {
            return Ok(None);
        }
        self.snapshot()
    }

    /// The answer to `request` on the model `info`: from the cache, or from an identical request
    /// being computed now (both marked `cached`), or from `compute`, whose answer is then stored.
    pub async fn generate<F, Fut>(
        &self,
        info: &ModelInfo,
        request: &GenerateRequest,
        compute: F,
    ) -> Result<GenerateResult>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<GenerateResult>>,
    {
        let key = generation_key(&info.digest, request);
        let mut compute = Some(compute);
        loop {
            if let Some(hit) = self.with(|c| c.lookup_generation(info, request)).flatten() {
                return Ok(hit);
            }
            let entry = {
                let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&key) {
                    Some(waiting) => Err(waiting.clone()),
                    None => {
                        let (answer, waiting) = watch::channel(None);
                        map.insert(key, waiting);
                        Ok(InFlightEntry { map: &self.in_flight, key, answer })
                    }
                }
            };
            match entry {
                Ok(entry) => {
                    let compute = compute.take().expect("only the first pass through here computes");
                    let fresh = compute().await?;
                    self.with(|c| c.store_generation(request, &fresh));
                    entry.answer.send_replace(Some(fresh.clone()));
                    return Ok(fresh);
                }
                Err(mut waiting) => {
                    // The first request's answer; or, when it failed or was cancelled, try again.
                    if let Ok(answer) = waiting.wait_for(Option::is_some).await {
                        if let Some(answer) = answer.clone() {
                            return Ok(GenerateResult { cached: true, ..answer });
                        }
                    }
                }
            }
        }
    }

    /// Embeddings of `texts` on the model `info`: cached vectors are reused, and `compute` gets
    /// only the texts the cache lacks (each once); its vectors are stored.
    pub async fn embed<F, Fut>(&self, info: &ModelInfo, texts: &[String], compute: F) -> Result<EmbedResult>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<EmbedResult>>,
    {
        let found = self.with(|c| c.lookup_embeddings(&info.digest, texts)).unwrap_or_else(|| vec![None; texts.len()]);
        let mut missing: Vec<String> = Vec::new();
        for (text, hit) in texts.iter().zip(&found) {
            if hit.is_none() && !missing.contains(text) {
                missing.push(text.clone());
            }
        }
        let mut answer = EmbedResult {
            embeddings: Vec::new(),
            model: info.name.clone(),
            model_digest: info.digest.clone(),
            engine_fingerprint: String::new(),
            cached: found.iter().filter(|hit| hit.is_some()).count(),
        };
        let computed = if missing.is_empty() {
            Vec::new()
        } else {
            let fresh = compute(missing.clone()).await?;
            self.with(|c| c.store_embeddings(&fresh.model_digest, &missing, &fresh.embeddings));
            answer.model = fresh.model;
            answer.model_digest = fresh.model_digest;
            fresh.embeddings
        };
        let by_text: HashMap<&str, &Vec<f32>> = missing.iter().map(String::as_str).zip(&computed).collect();
        answer.embeddings = found
            .into_iter()
            .zip(texts)
            .map(|(hit, text)| {
                hit.unwrap_or_else(|| by_text.get(text.as_str()).map(|v| (*v).clone()).unwrap_or_default())
            })
            .collect();
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::engine::generate::{FinishReason, Generation};
    use std::path::PathBuf;

    fn info() -> ModelInfo {
        ModelInfo { name: "m".into(), digest: "sha256:m".into(), dir: PathBuf::from("/m") }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn computes_only_missing_texts_once_and_keeps_order() {
        let cache =
            SharedCache::new(Some(Cache::new(&CacheConfig::default(), None, crate::cache::tests::test_engine())));
        let vector = |t: &str| vec![t.len() as f32];
        let compute = |texts: Vec<String>| async move {
            Ok(EmbedResult {
                embeddings: texts.iter().map(|t| vector(t)).collect(),
                model: "m".into(),
                model_digest: "sha256:m".into(),
                engine_fingerprint: String::new(),
                cached: 0,
            })
        };
        let texts: Vec<String> = ["a", "bb", "a"].map(String::from).to_vec();
        let first = block_on(cache.embed(&info(), &texts, compute)).unwrap();
        assert_eq!(first.embeddings, vec![vec![1.0], vec![2.0], vec![1.0]]);
        assert_eq!(first.cached, 0);
        let asked = std::cell::RefCell::new(Vec::new());
        let more: Vec<String> = ["ccc", "bb"].map(String::from).to_vec();
        let second = block_on(cache.embed(&info(), &more, |t| {
            asked.borrow_mut().extend(t.clone());
            compute(t)
        }))
        .unwrap();
        assert_eq!(*asked.borrow(), vec!["ccc".to_string()], "only the uncached text is computed");
        assert_eq!(second.embeddings, vec![vec![3.0], vec![2.0]]);
        assert_eq!(second.cached, 1, "one of the two texts came from the cache");
    }

    #[test]
    fn identical_concurrent_generations_run_once() {
        let cache = SharedCache::new(None);
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let request = request();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let answers = runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let cache = std::sync::Arc::new(cache);
            let runs = std::sync::Arc::new(runs);
            for _ in 0..8 {
                let (cache, runs, request) = (cache.clone(), runs.clone(), request.clone());
                set.spawn(async move {
                    cache
                        .generate(&info(), &request, || async move {
                            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            compute_answer()
                        })
                        .await
                });
            }
            let answers = set.join_all().await;
            (answers, runs.load(std::sync::atomic::Ordering::SeqCst), cache)
        });
        let (answers, runs, cache) = answers;
        assert_eq!(runs, 1, "one computation for eight requests");
        assert_eq!(answers.iter().filter(|a| !a.as_ref().unwrap().cached).count(), 1);
        assert!(answers.iter().all(|a| a.as_ref().unwrap().generation.text == "t"));
        // A failed computation does not poison its waiters: they compute themselves.
        let (first, second) = runtime.block_on(async {
            let failing = || async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(Error::Cancelled)
            };
            let model = info();
            tokio::join!(
                cache.generate(&model, &request, failing),
                cache.generate(&model, &request, || async { compute_answer() })
            )
        });
        assert!(first.is_err() && second.is_ok());
        assert!(cache.in_flight.lock().unwrap().is_empty());
    }

    fn request() -> GenerateRequest {
        GenerateRequest {
            prompt: "p".into(),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 1,
            max_new_tokens: 4,
            stop: vec![],
            sampling: Default::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        }
    }

    fn compute_answer() -> Result<GenerateResult> {
        Ok(GenerateResult {
            generation: Generation {
                text: "t".into(),
                token_ids: vec![7],
                prompt_tokens: 3,
                finish_reason: FinishReason::Eos,
                logprobs: None,
                tool_calls: Vec::new(),
            },
            model: "m".into(),
            model_digest: "sha256:m".into(),
            cached: false,
            prefix_tokens: 0,
            engine_fingerprint: String::new(),
        })
    }

    #[test]
    fn a_stored_generation_comes_back_marked_cached() {
        let cache =
            SharedCache::new(Some(Cache::new(&CacheConfig::default(), None, crate::cache::tests::test_engine())));
        let request = request();
        let fresh = compute_answer().unwrap();
        let first = block_on(cache.generate(&info(), &request, || async { Ok(fresh.clone()) })).unwrap();
        assert!(!first.cached);
        let again = block_on(cache.generate(&info(), &request, || async { Err(Error::Cancelled) })).unwrap();
        assert!(again.cached);
        assert_eq!(again.generation, fresh.generation);
        let off = SharedCache::new(None);
        assert!(matches!(off.stats(), Err(Error::CacheDisabled)));
        assert!(!block_on(off.generate(&info(), &request, || async { Ok(fresh.clone()) })).unwrap().cached);
    }
}
