//! The scheduler: one worker thread per loaded model, each owning its ONNX session, fed by a
//! bounded queue. It decides what runs when (today: one request at a time per model, in
//! arrival order); the engine below never sees more than the steps it is given.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::ModelInfo;
use crate::error::{Error, Result};
use crate::protocol::{EmbedParams, EmbedResult, GenerateParams, GenerateResult};
use crate::service::{EmbeddingService, GenerationService};

/// How often an idle worker proves it is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Most texts the embedding worker merges from queued requests into one encoder run. Rows do not
/// depend on their batch, so merging changes no result, only throughput.
const MERGE_TEXTS: usize = 64;

/// Which kind of model a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text generation.
    Generation,
    /// Embeddings.
    Embedding,
}

impl Kind {
    /// Lower-case name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Generation => "generation",
            Kind::Embedding => "embedding",
        }
    }
}

/// Work for a worker.
pub enum Job {
    /// A generation; `pieces` streams text, `cancel` stops it early.
    Generate {
        /// Request parameters.
        params: GenerateParams,
        /// Where text pieces go (bounded: a slow reader slows generation, memory stays bounded).
        pieces: Option<mpsc::Sender<String>>,
        /// Cancelled when the client goes away or shutdown times out.
        cancel: CancellationToken,
        /// The answer.
        reply: oneshot::Sender<Result<GenerateResult>>,
    },
    /// An embedding batch.
    Embed {
        /// Request parameters.
        params: EmbedParams,
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

enum Loaded {
    Generation(Box<GenerationService>),
    Embedding(Box<EmbeddingService>),
}

impl Loaded {
    fn load(kind: Kind, config: &Config) -> Result<Self> {
        Ok(match kind {
            Kind::Generation => Loaded::Generation(Box::new(GenerationService::load(config, None)?)),
            Kind::Embedding => Loaded::Embedding(Box::new(EmbeddingService::load(config, None)?)),
        })
    }

    fn info(&self) -> &ModelInfo {
        match self {
            Loaded::Generation(s) => s.info(),
            Loaded::Embedding(s) => s.info(),
        }
    }
}

/// A worker thread and its queue.
pub struct Worker {
    kind: Kind,
    tx: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    heartbeat_ms: Arc<AtomicU64>,
    merged: Arc<AtomicU64>,
    epoch: Instant,
    info: Arc<RwLock<ModelInfo>>,
}

/// Why a job was not queued.
pub enum SubmitError {
    /// The queue is full.
    Overloaded {
        /// Jobs already waiting.
        queued: usize,
    },
    /// The worker is gone.
    Stopped,
}

impl Worker {
    /// Starts a worker thread and loads its model; returns once the model is loaded.
    pub fn start(kind: Kind, config: Arc<Config>) -> Result<Self> {
        let (tx, rx) = sync_channel(config.daemon.queue_depth);
        let queued = Arc::new(AtomicUsize::new(0));
        let heartbeat_ms = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let merged = Arc::new(AtomicU64::new(0));
        let progress =
            Progress { queued: queued.clone(), heartbeat_ms: heartbeat_ms.clone(), merged: merged.clone(), epoch };
        std::thread::Builder::new()
            .name(format!("{}-worker", kind.as_str()))
            .spawn(move || match Loaded::load(kind, &config) {
                Ok(loaded) => {
                    let _ = loaded_tx.send(Ok(loaded.info().clone()));
                    run(loaded, config, rx, progress);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::io("worker thread", e))?;
        let info = loaded_rx.recv().map_err(|_| Error::Cancelled)??;
        Ok(Worker { kind, tx, queued, heartbeat_ms, merged, epoch, info: Arc::new(RwLock::new(info)) })
    }

    /// The model kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The loaded model's identity.
    pub fn info(&self) -> ModelInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the recorded identity after a reload.
    pub fn set_info(&self, info: ModelInfo) {
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = info;
    }

    /// Requests that were merged into another request's model run.
    pub fn merged(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Jobs waiting or running.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Time since the worker last showed progress (a step, a finished job, or an idle tick).
    pub fn since_heartbeat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Queues a job without waiting; a full queue is refused at once.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                let queued = self.queued.fetch_sub(1, Ordering::Relaxed) - 1;
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Overloaded { queued },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Queues a job, waiting for room (used for reloads, which must not be refused).
    pub fn submit_blocking(&self, job: Job) -> std::result::Result<(), SubmitError> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped
        })
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

fn run(mut loaded: Loaded, mut config: Arc<Config>, rx: Receiver<Job>, p: Progress) {
    p.beat();
    let mut backlog: VecDeque<Job> = VecDeque::new();
    loop {
        let job = match backlog.pop_front().map(Ok).unwrap_or_else(|| rx.recv_timeout(HEARTBEAT)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                p.beat();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut done = 1;
        match (job, &mut loaded) {
            (Job::Generate { params, pieces, cancel, reply }, Loaded::Generation(service)) => {
                let mut on_piece = |text: &str| {
                    p.beat();
                    if cancel.is_cancelled() {
                        return false;
                    }
                    match &pieces {
                        Some(tx) if !text.is_empty() => tx.blocking_send(text.to_string()).is_ok(),
                        _ => true,
                    }
                };
                let result = if cancel.is_cancelled() {
                    Err(Error::Cancelled)
                } else {
                    service.run(&config, &params, &mut on_piece)
                };
                let _ = reply.send(result);
            }
            (Job::Embed { params, reply }, Loaded::Embedding(service)) => {
                // Take the embed requests already waiting along, up to MERGE_TEXTS texts.
                let mut texts = params.texts.len();
                let mut batch = vec![(params, reply)];
                while texts < MERGE_TEXTS {
                    match rx.try_recv() {
                        Ok(Job::Embed { params, reply }) => {
                            texts += params.texts.len();
                            batch.push((params, reply));
                        }
                        Ok(other) => {
                            backlog.push_back(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                done = batch.len();
                p.merged.fetch_add(done as u64 - 1, Ordering::Relaxed);
                let (all, replies): (Vec<EmbedParams>, Vec<_>) = batch.into_iter().unzip();
                for (result, reply) in service.run_many(&config, &all).into_iter().zip(replies) {
                    let _ = reply.send(result);
                }
            }
            (Job::Reload { config: new, reply }, current) => {
                let kind = match current {
                    Loaded::Generation(_) => Kind::Generation,
                    Loaded::Embedding(_) => Kind::Embedding,
                };
                let outcome = reload(kind, current, &new);
                config = new;
                let _ = reply.send(outcome);
            }
            (Job::Generate { reply, .. }, _) => {
                let _ = reply.send(Err(Error::InvalidRequest("this worker does not generate".into())));
            }
            (Job::Embed { reply, .. }, _) => {
                let _ = reply.send(Err(Error::InvalidRequest("this worker does not embed".into())));
            }
        }
        p.queued.fetch_sub(done, Ordering::Relaxed);
        p.beat();
    }
}

/// Loads the configured model again when its name, folder or digest changed.
fn reload(kind: Kind, current: &mut Loaded, config: &Config) -> Result<Option<ModelInfo>> {
    let name = match kind {
        Kind::Generation => &config.generation_model,
        Kind::Embedding => &config.embedding_model,
    };
    let dir = crate::model::resolve_dir(&config.model_dir, name)?;
    let digest = crate::model::ModelFiles::discover(&dir)?.digest()?;
    let info = current.info();
    if info.dir == dir && info.digest == digest {
        return Ok(None);
    }
    *current = Loaded::load(kind, config)?;
    Ok(Some(current.info().clone()))
}
