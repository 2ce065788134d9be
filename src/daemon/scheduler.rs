//! The scheduler: one worker thread per loaded model, each owning its [`Model`], fed by a
//! bounded queue. It decides what runs when: generations are admitted in arrival order at step
//! boundaries, up to the model's [`Model::max_active`], and advanced together one step at a time
//! (the model batches their decode steps when that changes no bit); queued embed requests are
//! merged into one model run. Jobs carry validated requests: the
//! worker never re-checks them, and never blocks on a client (stream pieces go to a per-request
//! buffer that the connection task drains; a stalled reader is cut off there).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::generate::GenerateRequest;
use crate::engine::prefix::PrefixStats;
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::model::ModelKind;
use crate::protocol::{EmbedResult, GenerateResult};
use crate::service::{Admission, Advance, Model};

/// How often an idle worker proves it is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a reload waits between tries while a queue is full.
const RELOAD_RETRY: Duration = Duration::from_millis(20);

/// Most texts the embedding worker merges from queued requests into one encoder run. Rows do not
/// depend on their batch, so merging changes no result, only throughput.
const MERGE_TEXTS: usize = 64;

/// Inputs above this many bytes are large: after such a job the worker gives freed memory back
/// to the system, so one big request does not leave the daemon's RSS high.
const LARGE_JOB_BYTES: usize = super::memory::LARGE_REQUEST_BYTES;

/// Embed batches above this many bytes of text are followed by giving freed memory back: an
/// encoder's intermediates grow with rows x tokens (and attention with tokens squared), so 64
/// texts of ~2 KB (128 KB) left ~250 MB behind (measured, MiniLM) although no input was large.
const LARGE_EMBED_BYTES: usize = 16 * 1024;

/// Generations of at least this many tokens (prompt and output) are followed by giving freed
/// memory back too.
const LONG_SEQUENCE_TOKENS: usize = 512;

/// Loads the model of a kind for a configuration (the ONNX loader, or a fake in tests).
pub(crate) type Loader = Arc<dyn Fn(ModelKind, &Config) -> Result<Box<dyn Model>> + Send + Sync>;

/// Work for a worker.
pub(crate) enum Job {
    /// A generation; `pieces` streams text, `cancel` stops it early.
    Generate {
        /// The validated request (boxed: it is much larger than the other jobs).
        request: Box<GenerateRequest>,
        /// Where text pieces go. Unbounded on purpose: a request's pieces are bounded by its
        /// `max_new_tokens`, and the worker must never wait for a client.
        pieces: Option<mpsc::UnboundedSender<String>>,
        /// Cancelled when the client goes away or shutdown times out.
        cancel: CancellationToken,
        /// The answer.
        reply: oneshot::Sender<Result<GenerateResult>>,
    },
    /// A validated embedding batch.
    Embed {
        /// Texts to embed.
        texts: Vec<String>,
        /// The answer.
        reply: oneshot::Sender<Result<EmbedResult>>,
    },
    /// Reload the model if its files or the configured model changed.
    Reload {
        /// The new configuration.
        config: Arc<Config>,
        /// The new model's identity when it changed.
        reply: oneshot::Sender<Result<Option<ModelInfo>>>,
    },
}

/// A worker thread and its queue.
pub(crate) struct Worker {
    kind: ModelKind,
    tx: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    heartbeat_ms: Arc<AtomicU64>,
    merged: Arc<AtomicU64>,
    epoch: Instant,
    info: RwLock<ModelInfo>,
    max_active: Arc<AtomicUsize>,
    /// The loaded model's prefix cache counters (generation models; replaced on reload).
    prefix: Arc<Mutex<Option<Arc<PrefixStats>>>>,
    /// The thread, joined when the worker is dropped.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    /// Closes the queue and waits until the thread has dropped its model, so that a model unloaded
    /// to make room is gone (its memory given back) before another loads. No request holds the
    /// worker by then, so the thread is idle or ends its step.
    fn drop(&mut self) {
        let (closed, _) = sync_channel(0);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Worker {
    /// Starts a worker thread and loads its model with `loader`; returns once it is loaded.
    pub(crate) fn start(kind: ModelKind, config: Arc<Config>, loader: Loader) -> Result<Self> {
        let (tx, rx) = sync_channel(config.daemon.queue_depth);
        let progress = Progress {
            queued: Arc::new(AtomicUsize::new(0)),
            heartbeat_ms: Arc::new(AtomicU64::new(0)),
            merged: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        let (queued, heartbeat_ms, merged, epoch) =
            (progress.queued.clone(), progress.heartbeat_ms.clone(), progress.merged.clone(), progress.epoch);
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let max_active = Arc::new(AtomicUsize::new(1));
        let shown = Shown { max_active: max_active.clone(), prefix: Arc::default() };
        let prefix = shown.prefix.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-worker", kind.as_str()))
            // Constraints compile and mask on this thread (see STACK_BYTES).
            .stack_size(crate::engine::constraint::STACK_BYTES)
            .spawn(move || match loader(kind, &config) {
                Ok(model) => {
                    shown.update(model.as_ref());
                    let _ = loaded_tx.send(Ok(model.info().clone()));
                    let name = model.info().name.clone();
                    // Runs until the registry and every request have let go of the worker; the
                    // model is dropped then, and its memory handed back.
                    run(model, rx, progress, loader, shown);
                    super::memory::release_memory();
                    tracing::info!(kind = kind.as_str(), model = %name, "model unloaded");
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::io("worker thread", e))?;
        let info = loaded_rx.recv().map_err(|_| Error::ShuttingDown)??;
        let thread = Some(thread);
        Ok(Worker {
            kind,
            tx,
            queued,
            heartbeat_ms,
            merged,
            epoch,
            info: RwLock::new(info),
            max_active,
            prefix,
            thread,
        })
    }

    /// The model kind.
    pub(crate) fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The loaded model's identity.
    pub(crate) fn info(&self) -> ModelInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a request's `model` field (None: the default) selects this worker's model.
    pub(crate) fn answers_to(&self, requested: &str) -> bool {
        self.info.read().unwrap_or_else(|p| p.into_inner()).answers_to(requested)
    }

    /// Most generations the model advances together.
    pub(crate) fn max_active(&self) -> usize {
        self.max_active.load(Ordering::Relaxed)
    }

    /// The loaded model's prefix cache counters (None: not a generation model).
    pub(crate) fn prefix_stats(&self) -> Option<Arc<PrefixStats>> {
        self.prefix.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests that were merged into another request's model run.
    pub(crate) fn merged(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Jobs waiting or running.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Time since the worker last showed progress (a step, a finished job, or an idle tick).
    pub(crate) fn since_heartbeat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Queues a job without waiting; a full queue is refused at once with the jobs waiting.
    /// (The refused job comes back whole, for a retry: boxing it would cost every submit.)
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(&self, job: Job) -> std::result::Result<(), (Job, Option<usize>)> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(job).map_err(|e| {
            let queued = self.queued.fetch_sub(1, Ordering::Relaxed) - 1;
            match e {
                TrySendError::Full(job) => (job, Some(queued)),
                TrySendError::Disconnected(job) => (job, None),
            }
        })
    }

    /// Reloads the model for `config` when its files or name changed, waiting (asynchronously)
    /// for room in the queue: a reload is never refused. Records the new identity.
    pub(crate) async fn reload(&self, config: Arc<Config>) -> Result<Option<ModelInfo>> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job::Reload { config, reply };
        loop {
            match self.submit(job) {
                Ok(()) => break,
                Err((back, Some(_))) => {
                    job = back;
                    tokio::time::sleep(RELOAD_RETRY).await;
                }
                Err((_, None)) => return Err(Error::ShuttingDown),
            }
        }
        let changed = answer.await.map_err(|_| Error::ShuttingDown)??;
        if let Some(info) = &changed {
            *self.info.write().unwrap_or_else(|p| p.into_inner()) = info.clone();
        }
        Ok(changed)
    }
}

/// What the worker shows of its loaded model.
struct Shown {
    max_active: Arc<AtomicUsize>,
    prefix: Arc<Mutex<Option<Arc<PrefixStats>>>>,
}

impl Shown {
    fn update(&self, model: &dyn Model) {
        self.max_active.store(model.max_active(), Ordering::Relaxed);
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner()) = model.prefix_stats();
    }
}

/// The worker's shared counters.
struct Progress {
    queued: Arc<AtomicUsize>,
    heartbeat_ms: Arc<AtomicU64>,
    merged: Arc<AtomicU64>,
    epoch: Instant,
}

impl Progress {
    fn beat(&self) {
        self.heartbeat_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A generation the worker has admitted to its model.
struct Active {
    id: u64,
    pieces: Option<mpsc::UnboundedSender<String>>,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<GenerateResult>>,
    large: bool,
}

impl Active {
    /// Whether its client cancelled it or stopped reading.
    fn abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.pieces.as_ref().is_some_and(|tx| tx.is_closed())
    }
}

/// The worker loop: takes jobs at step boundaries (waiting only when idle), admits generations
/// up to the model's [`Model::max_active`], and advances all admitted ones one step at a time.
/// A reload waits until the active generations are done (no new one is admitted meanwhile).
fn run(mut model: Box<dyn Model>, rx: Receiver<Job>, p: Progress, loader: Loader, shown: Shown) {
    p.beat();
    let mut backlog: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut next_id = 0u64;
    // Set when the model answered Admission::Later; cleared when an active generation leaves (only
    // then can there be room, so a waiting prompt is not templated and tokenized every step).
    let mut full = false;
    loop {
        full &= !active.is_empty();
        while !full && active.len() < model.max_active() {
            let next = match backlog.pop_front() {
                Some(job) => Ok(job),
                None if active.is_empty() => rx.recv_timeout(HEARTBEAT),
                None => rx.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
            };
            let job = match next {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) if active.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match job {
                Job::Generate { request, pieces, cancel, reply } => {
                    let admitted =
                        if cancel.is_cancelled() { Err(Error::Cancelled) } else { model.admit(next_id, &request) };
                    match admitted {
                        Ok(Admission::Later) => {
                            // Room comes when an active generation finishes; keep arrival order.
                            backlog.push_front(Job::Generate { request, pieces, cancel, reply });
                            full = true;
                            break;
                        }
                        Ok(Admission::Started) => {
                            let large = request.prompt.len()
                                + request.messages.iter().map(|m| m.content.len()).sum::<usize>()
                                > LARGE_JOB_BYTES;
                            active.push(Active { id: next_id, pieces, cancel, reply, large });
                            next_id += 1;
                        }
                        Err(e) => finish(&p, reply, Err(e), false),
                    }
                }
                Job::Embed { texts, reply } => {
                    let batch = take_embed_batch(texts, reply, &rx, &mut backlog);
                    let text_bytes = batch.iter().flat_map(|(texts, _)| texts).map(String::len).sum::<usize>();
                    let large = text_bytes > LARGE_EMBED_BYTES;
                    p.merged.fetch_add(batch.len() as u64 - 1, Ordering::Relaxed);
                    embed_merged(model.as_mut(), batch, &p);
                    if large {
                        super::memory::release_memory();
                    }
                }
                Job::Reload { config, reply } if active.is_empty() => {
                    finish(&p, reply, reload(&mut model, &config, &loader), true);
                    shown.update(model.as_ref());
                }
                reload @ Job::Reload { .. } => {
                    backlog.push_front(reload);
                    break;
                }
            }
            p.beat();
        }
        p.beat();
        if active.is_empty() {
            continue;
        }
        let (gone, kept): (Vec<Active>, Vec<Active>) = active.into_iter().partition(Active::abandoned);
        active = kept;
        full &= gone.is_empty();
        for a in gone {
            model.cancel(a.id);
            // Its KV cache (of any length) was just dropped: hand the memory back.
            finish(&p, a.reply, Err(Error::Cancelled), true);
        }
        for (id, advance) in model.step() {
            let Some(at) = active.iter().position(|a| a.id == id) else { continue };
            match advance {
                Advance::Piece(text) => {
                    if let Some(tx) = active[at].pieces.as_ref().filter(|_| !text.is_empty()) {
                        // A gone reader is noticed before the next step (the send fails the same way).
                        let _ = tx.send(text);
                    }
                }
                Advance::Done(result) => {
                    full = false;
                    let a = active.remove(at);
                    // A long sequence leaves its KV cache's memory behind: give it back.
                    let large = a.large
                        || result.as_ref().is_ok_and(|r| {
                            r.generation.prompt_tokens + r.generation.token_ids.len() >= LONG_SEQUENCE_TOKENS
                        });
                    finish(&p, a.reply, result, large);
                }
            }
        }
        p.beat();
    }
}

/// Counts a job done and answers it (in that order: whoever has the answer sees the count);
/// after a large one, gives freed memory back.
fn finish<T>(p: &Progress, reply: oneshot::Sender<Result<T>>, result: Result<T>, large: bool) {
    p.queued.fetch_sub(1, Ordering::Relaxed);
    let _ = reply.send(result);
    if large {
        super::memory::release_memory();
    }
}

type EmbedJob = (Vec<String>, oneshot::Sender<Result<EmbedResult>>);

/// The embed request at hand plus those already waiting, up to [`MERGE_TEXTS`] texts; another
/// kind of job found on the way is kept for next.
fn take_embed_batch(
    texts: Vec<String>,
    reply: oneshot::Sender<Result<EmbedResult>>,
    rx: &Receiver<Job>,
    backlog: &mut VecDeque<Job>,
) -> Vec<EmbedJob> {
    let mut count = texts.len();
    let mut batch = vec![(texts, reply)];
    while count < MERGE_TEXTS {
        match rx.try_recv() {
            Ok(Job::Embed { texts, reply }) => {
                count += texts.len();
                batch.push((texts, reply));
            }
            Ok(other) => {
                backlog.push_back(other);
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// Runs merged embed requests as one model call and gives each its own rows.
fn embed_merged(model: &mut dyn Model, batch: Vec<EmbedJob>, p: &Progress) {
    let all: Vec<String> = batch.iter().flat_map(|(texts, _)| texts.iter().cloned()).collect();
    let result = model.embed(&all);
    p.queued.fetch_sub(batch.len(), Ordering::Relaxed);
    match result {
        Ok(result) => {
            let mut rows = result.embeddings.into_iter();
            for (texts, reply) in batch {
                let _ = reply.send(Ok(EmbedResult {
                    embeddings: rows.by_ref().take(texts.len()).collect(),
                    model: result.model.clone(),
                    model_digest: result.model_digest.clone(),
                    engine_fingerprint: String::new(),
                    cached: 0,
                }));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(Error::engine(&model.info().name, reason.clone())));
            }
        }
    }
}

/// Loads the configured model again when its name, folder or digest changed.
fn reload(model: &mut Box<dyn Model>, config: &Config, loader: &Loader) -> Result<Option<ModelInfo>> {
    let kind = model.kind();
    let dir = crate::model::resolve_dir(&config.model_dir, config.model_name(kind))?;
    let digest = crate::model::ModelFiles::discover(&dir)?.digest()?;
    if model.info().dir == dir && model.info().digest == digest {
        return Ok(None);
    }
    *model = loader(kind, config)?;
    Ok(Some(model.info().clone()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::generate::{FinishReason, Generation};
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// A scripted model: each generation emits `pieces` one per step (a step waits `step` and
    /// advances up to `max_active` generations, recording how many in `steps`); embedding gives
    /// each text the vector `[len, calls]` and records every batch it ran.
    pub(crate) struct Fake {
        pub(crate) kind: ModelKind,
        pub(crate) info: ModelInfo,
        pub(crate) pieces: Vec<String>,
        pub(crate) step: Duration,
        pub(crate) batches: Arc<Mutex<Vec<usize>>>,
        pub(crate) max_active: usize,
        /// Generations it takes before answering [`Admission::Later`] (as a spent KV budget does).
        pub(crate) room: usize,
        pub(crate) steps: Arc<Mutex<Vec<usize>>>,
        pub(crate) active: Vec<(u64, GenerateRequest, usize)>,
    }

    impl Fake {
        pub(crate) fn new(kind: ModelKind) -> Self {
            Fake {
                kind,
                info: ModelInfo {
                    name: format!("fake-{}", kind.as_str()),
                    digest: "sha256:fake".into(),
                    dir: PathBuf::from("/fake"),
                },
                pieces: ["Hel", "lo", ", ", "world"].map(String::from).to_vec(),
                step: Duration::from_millis(1),
                batches: Arc::default(),
                max_active: 1,
                room: usize::MAX,
                steps: Arc::default(),
                active: Vec::new(),
            }
        }
    }

    impl Model for Fake {
        fn kind(&self) -> ModelKind {
            self.kind
        }

        fn info(&self) -> &ModelInfo {
            &self.info
        }

        fn max_active(&self) -> usize {
            self.max_active
        }

        fn admit(&mut self, id: u64, request: &GenerateRequest) -> Result<Admission> {
            if self.active.len() >= self.room {
                return Ok(Admission::Later);
            }
            self.active.push((id, request.clone(), 0));
            Ok(Admission::Started)
        }

        /// Every active generation emits its next piece; one step sleeps `step`.
        fn step(&mut self) -> Vec<(u64, Advance)> {
            std::thread::sleep(self.step);
            self.steps.lock().unwrap().push(self.active.len());
            let mut events = Vec::new();
            for (id, request, emitted) in &mut self.active {
                let n = self.pieces.len().min(request.max_new_tokens);
                events.push((*id, Advance::Piece(self.pieces[*emitted].clone())));
                *emitted += 1;
                if *emitted == n {
                    let result = GenerateResult {
                        generation: Generation {
                            text: self.pieces[..n].concat(),
                            token_ids: (0..n as u32).collect(),
                            prompt_tokens: request.prompt.len(),
                            finish_reason: FinishReason::Length,
                            logprobs: None,
                            tool_calls: Vec::new(),
                        },
                        model: self.info.name.clone(),
                        model_digest: self.info.digest.clone(),
                        cached: false,
                        prefix_tokens: 0,
                        engine_fingerprint: String::new(),
                    };
                    events.push((*id, Advance::Done(Ok(result))));
                }
            }
            self.active.retain(|(_, request, emitted)| *emitted < self.pieces.len().min(request.max_new_tokens));
            events
        }

        fn cancel(&mut self, id: u64) {
            self.active.retain(|(active, ..)| *active != id);
        }

        fn embed(&mut self, texts: &[String]) -> Result<EmbedResult> {
            std::thread::sleep(self.step);
            let mut batches = self.batches.lock().unwrap();
            batches.push(texts.len());
            let call = batches.len() as f32;
            Ok(EmbedResult {
                embeddings: texts.iter().map(|t| vec![t.len() as f32, call]).collect(),
                model: self.info.name.clone(),
                model_digest: self.info.digest.clone(),
                engine_fingerprint: String::new(),
                cached: 0,
            })
        }
    }

    /// A loader that hands out `make()` for every kind.
    pub(crate) fn loader(make: impl Fn(ModelKind) -> Fake + Send + Sync + 'static) -> Loader {
        Arc::new(move |kind, _config| Ok(Box::new(make(kind)) as Box<dyn Model>))
    }

    pub(crate) fn request(max_new_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt: "p".into(),
            messages: Vec::new(),
            raw: false,
            think: false,
            seed: 1,
            max_new_tokens,
            stop: vec![],
            sampling: Default::default(),
            constraint: None,
            logprobs: None,
            tools: None,
        }
    }

    fn generate_job(
        max_new_tokens: usize,
        streaming: bool,
    ) -> (Job, oneshot::Receiver<Result<GenerateResult>>, mpsc::UnboundedReceiver<String>, CancellationToken) {
        let (reply, answer) = oneshot::channel();
        let (tx, pieces) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let job = Job::Generate {
            request: Box::new(request(max_new_tokens)),
            pieces: streaming.then_some(tx),
            cancel: cancel.clone(),
            reply,
        };
        (job, answer, pieces, cancel)
    }

    #[test]
    fn queued_embed_requests_are_merged_and_each_gets_its_rows() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let b = batches.clone();
        let worker = Worker::start(
            ModelKind::Embedding,
            Arc::new(Config::default()),
            loader(move |k| Fake { batches: b.clone(), step: Duration::from_millis(30), ..Fake::new(k) }),
        )
        .unwrap();
        // The first request runs alone; the three queued while it runs are merged.
        let mut answers = Vec::new();
        for i in 0..4 {
            let (reply, answer) = oneshot::channel();
            let texts: Vec<String> = (0..=i).map(|j| "x".repeat(j + 1)).collect();
            assert!(worker.submit(Job::Embed { texts, reply }).is_ok());
            answers.push(answer);
        }
        for (i, answer) in answers.into_iter().enumerate() {
            let result = answer.blocking_recv().unwrap().unwrap();
            let lens: Vec<f32> = result.embeddings.iter().map(|v| v[0]).collect();
            assert_eq!(lens, (1..=i + 1).map(|l| l as f32).collect::<Vec<_>>(), "request {i} got its own rows");
        }
        let runs = batches.lock().unwrap().clone();
        assert_eq!(runs.iter().sum::<usize>(), 1 + 2 + 3 + 4);
        assert!(runs.len() < 4, "queued requests were merged: {runs:?}");
        assert_eq!(worker.merged() as usize, 4 - runs.len());
    }

    /// A generation worker whose fake model emits `pieces` pieces of "x".
    fn generation_worker(pieces: usize) -> Worker {
        let make = move |k| Fake { pieces: vec!["x".into(); pieces], ..Fake::new(k) };
        Worker::start(ModelKind::Generation, Arc::new(Config::default()), loader(make)).unwrap()
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_worker() {
        let worker = generation_worker(1000);
        // A streaming request whose pieces nobody reads: all 1000 pieces are produced.
        let (job, answer, unread, _cancel) = generate_job(1000, true);
        assert!(worker.submit(job).is_ok());
        let (job, second, _, _) = generate_job(2, false);
        assert!(worker.submit(job).is_ok());
        assert_eq!(answer.blocking_recv().unwrap().unwrap().generation.text.len(), 1000);
        assert_eq!(second.blocking_recv().unwrap().unwrap().generation.text, "xx");
        drop(unread);
    }

    #[test]
    fn cancellation_stops_a_generation_and_a_gone_reader_cancels_it() {
        let worker = generation_worker(10_000);
        let (job, answer, _pieces, cancel) = generate_job(10_000, true);
        assert!(worker.submit(job).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        assert!(matches!(answer.blocking_recv().unwrap(), Err(Error::Cancelled)));

        let (job, answer, pieces, _cancel) = generate_job(10_000, true);
        drop(pieces);
        assert!(worker.submit(job).is_ok());
        assert!(matches!(answer.blocking_recv().unwrap(), Err(Error::Cancelled)));
        assert!(worker.since_heartbeat() < Duration::from_secs(1), "the worker kept beating");
    }

    #[test]
    fn concurrent_generations_advance_together_and_a_reload_waits_for_them() {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let s = steps.clone();
        let make = move |k| Fake {
            pieces: vec!["x".into(); 50],
            max_active: 4,
            steps: s.clone(),
            step: Duration::from_millis(2),
            ..Fake::new(k)
        };
        let worker = Worker::start(ModelKind::Generation, Arc::new(Config::default()), loader(make)).unwrap();
        let mut answers = Vec::new();
        for max in [50, 30, 40, 20, 10, 5] {
            let (job, answer, _, _) = generate_job(max, false);
            assert!(worker.submit(job).is_ok());
            answers.push((max, answer));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reload = rt.block_on(worker.reload(Arc::new(Config::default())));
        // The fake's folder does not exist: the reload fails, but only after the generations.
        assert!(reload.is_err());
        let widest = steps.lock().unwrap().iter().copied().max().unwrap();
        assert_eq!(widest, 4, "at most max_active generations advance in one step, and that many did");
        for (max, mut answer) in answers {
            // Already answered when the reload was: it waited for every admitted generation.
            assert_eq!(answer.try_recv().unwrap().unwrap().generation.text, "x".repeat(max));
        }
    }

    #[test]
    fn a_generation_without_room_waits_and_runs_when_room_comes() {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let s = steps.clone();
        let make =
            move |k| Fake { pieces: vec!["x".into(); 20], max_active: 4, room: 2, steps: s.clone(), ..Fake::new(k) };
        let worker = Worker::start(ModelKind::Generation, Arc::new(Config::default()), loader(make)).unwrap();
        let answers: Vec<_> = [20, 3, 10, 5, 8]
            .into_iter()
            .map(|max| {
                let (job, answer, _, _) = generate_job(max, false);
                assert!(worker.submit(job).is_ok());
                (max, answer)
            })
            .collect();
        for (max, answer) in answers {
            assert_eq!(answer.blocking_recv().unwrap().unwrap().generation.text, "x".repeat(max));
        }
        let widths = steps.lock().unwrap().clone();
        assert_eq!(widths.iter().max(), Some(&2), "never more than the room: {widths:?}");
        assert_eq!(worker.queued(), 0);
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        let config = Config {
            daemon: crate::config::DaemonConfig { queue_depth: 1, ..Default::default() },
            ..Default::default()
        };
        let worker = Worker::start(
            ModelKind::Generation,
            Arc::new(config),
            loader(|k| Fake { step: Duration::from_millis(50), ..Fake::new(k) }),
        )
        .unwrap();
        let mut refused = 0;
        let mut answers = Vec::new();
        for _ in 0..6 {
            let (job, answer, _, _) = generate_job(4, false);
            match worker.submit(job) {
                Ok(()) => answers.push(answer),
                Err((_, Some(_))) => refused += 1,
                Err((_, None)) => panic!("worker stopped"),
            }
        }
        assert!(refused > 0, "a queue of depth 1 refused nothing");
        for a in answers {
            assert!(a.blocking_recv().unwrap().is_ok());
        }
    }
}
