//! ONNX Runtime sessions with the project's fixed options, and what the backends share: the
//! input checks, tensor helpers and runs in the shared CPU arena.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor};

use crate::config::Device;
use crate::engine::kernels;
use crate::engine::kernels::spin_pool::SpinPool;
use crate::error::{Error, Result};

/// Fixed session settings; every one of them is part of the determinism contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Intra-op threads.
    pub intra_threads: usize,
    /// Execution provider.
    pub device: Device,
    /// CUDA device ordinal.
    pub cuda_device_id: i32,
}

/// Whether a model's runs repeat their input shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// An encoder's: batches of a few sizes. ONNX Runtime's memory pattern (one block planned per
    /// input shape, kept) pays off.
    Repeating,
    /// A decoder's: every step has another past length. A memory pattern per shape would be
    /// planned, allocated and kept for each one (measured: a 2,600-token generation's RSS grew by
    /// 1.3 GB with it, stayed flat without it); it is off. It changes no number either way.
    PerStep,
}

/// Builds an ONNX Runtime session with the project's fixed options, of the file `onnx` or, given
/// `rewritten`, of those bytes (the file's graph rewritten, as `encoder_fusion` does); with the
/// threads of its [`kernels`] operators (`intra_threads` of them for a graph that uses them, the
/// caller's alone otherwise).
#[allow(clippy::result_large_err)] // the large error type is ort's own builder error
pub fn build_session(
    env: &ort::environment::Environment,
    onnx: &Path,
    rewritten: Option<&[u8]>,
    model: &str,
    s: SessionSettings,
    shapes: Shapes,
) -> Result<(Session, Arc<SpinPool>)> {
    let form = if rewritten.is_some() { " (its attention fused)" } else { "" };
    let fail = |e: String| {
        Error::model(
            model,
            format!(
                "cannot load {}{form}: {e}; the file is corrupt or not an ONNX model, fetch the model again",
                onnx.display()
            ),
        )
    };
    // Intra-op threads spin (between the many small nodes of a decode step, parking and waking
    // them cost ~35% of decode speed), and keep spinning a bounded moment after a Run() returns,
    // so that the next step, sub-batch or request finds them awake; then they sleep. An encoder's
    // were once stopped at the end of each Run() (`session.force_spinning_stop`): with the answer
    // in base64 (no float parsing for the client to do meanwhile) that lost, paired in one run,
    // two daemons and Python taking turns, 600 one-text embeds each: p50 6.58 -> 6.18 ms,
    // 5.43 -> 5.20, 6.62 -> 6.31 (base64); 5.51 -> 5.38, 5.15 -> 4.96 (JSON numbers). Spinning
    // changes no number.
    // A graph that uses our operators runs ONNX Runtime's own nodes on the caller's thread and
    // our operators on a pool of its threads (see `kernels::spin_pool`).
    let ours = rewritten.is_none()
        && crate::onnx_proto::opset_domains(onnx).is_ok_and(|d| d.iter().any(|d| d == kernels::ort_op::DOMAIN));
    let (ort_threads, our_threads) = if ours { (1, s.intra_threads) } else { (s.intra_threads, 1) };
    let configure = |b: SessionBuilder| -> std::result::Result<SessionBuilder, ort::Error<SessionBuilder>> {
        b.with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(ort_threads)?
            .with_inter_threads(1)?
            .with_parallel_execution(false)?
            .with_intra_op_spinning(true)?
            .with_inter_op_spinning(false)?
            .with_deterministic_compute(true)?
            .with_memory_pattern(shapes == Shapes::Repeating)
    };
    let builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
    let mut builder = configure(builder).map_err(|e| fail(e.to_string()))?;
    let pool = Arc::new(
        SpinPool::new(our_threads, "kernel-helper")
            .map_err(|e| Error::model(model, format!("cannot start the kernels' threads: {e}")))?,
    );
    let operators = kernels::ort_op::domain(pool.clone()).map_err(|e| fail(e.to_string()))?;
    builder = builder.with_operators(operators).map_err(|e| fail(e.to_string()))?;
    // A decoder's session has no arena: ONNX Runtime's CPU arena keeps the peak of every run (a
    // long sequence's KV cache) for the life of the process; with plain allocations the worker
    // gives that memory back after large jobs (malloc_trim). Decode speed measured the same
    // (40.3-40.9 vs 39.8-40.7 tokens/s, 48 tokens through the daemon). An encoder's takes the
    // process's shared arena (`arena`: grown by what a run asks, shrunk after large runs), its
    // weights outside it so that what runs freed can go back.
    if s.device == Device::Cpu {
        if shapes == Shapes::Repeating {
            match super::arena::register_cpu_arena(env) {
                Ok(()) => {
                    builder = builder
                        .with_env_allocators()
                        .and_then(|b| b.with_device_allocated_initializers())
                        .map_err(|e| fail(e.to_string()))?;
                }
                Err(e) => {
                    tracing::warn!(model, error = %e, "encoders run without a shared arena (the same numbers; large batches run slower)")
                }
            }
        }
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| fail(e.to_string()))?;
    }
    if s.device == Device::Cuda {
        let cuda =
            ort::ep::CUDA::default().with_device_id(s.cuda_device_id).with_tf32(false).build().error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| Error::model(model, format!("CUDA execution provider unavailable: {e}; install the CUDA build of ONNX Runtime and CUDA 13 libraries, or set device = \"cpu\"")))?;
    }
    let session = if let Some(bytes) = rewritten {
        in_turn_until_the_domain_is_added(|| builder.commit_from_memory(bytes)).map_err(|e| fail(e.to_string()))?
    } else {
        std::fs::File::open(onnx).map_err(|e| Error::io(onnx, e))?;
        in_turn_until_the_domain_is_added(|| builder.commit_from_file(onnx)).map_err(|e| fail(e.to_string()))?
    };
    Ok((session, pool))
}

/// Runs over this many tokens (rows x padded length) of a session that takes the shared CPU
/// arena (encoders, cross-encoders) shrink the arena when they end: what smaller runs use stays
/// for the next ones, what larger ones used goes back.
const SHRINK_AFTER_TOKENS: usize = 512;

/// Run options that give the CPU arena's free memory back at the end of a run.
pub(super) fn shrinking_run_options() -> ort::Result<RunOptions> {
    let mut options = RunOptions::new()?;
    options.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
    Ok(options)
}

/// Runs `session` (which takes the shared CPU arena) on `inputs` of `tokens` tokens, with
/// `shrink` (from [`shrinking_run_options`]) when the run is a large one.
pub(super) fn run_in_arena<'s>(
    session: &'s mut Session,
    shrink: &'s RunOptions,
    inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
    tokens: usize,
) -> ort::Result<SessionOutputs<'s>> {
    if tokens > SHRINK_AFTER_TOKENS {
        session.run_with_options(inputs, shrink)
    } else {
        session.run(inputs)
    }
}

/// Creates sessions one at a time until one has been created, then at once.
///
/// ONNX Runtime adds a session's custom-operator domains to a process-wide table as it creates
/// the session, and checks whether a domain is there outside that table's lock
/// (`CreateCustomRegistry` in onnxruntime/core/session/custom_ops.cc, read in the public source):
/// two first sessions created at once both find `ai.steadytext` missing, and the second fails
/// with "the domain is already exist". Once one session has added it, the check only reads.
fn in_turn_until_the_domain_is_added<T, E>(
    create: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    static ADDED: AtomicBool = AtomicBool::new(false);
    static TURN: Mutex<()> = Mutex::new(());
    if ADDED.load(Ordering::Acquire) {
        return create();
    }
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let created = create();
    if created.is_ok() {
        ADDED.store(true, Ordering::Release);
    }
    created
}

/// Maps ONNX Runtime's failures to the model's inference error.
pub(super) fn inference(model: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |source| Error::Inference { model: model.to_string(), source }
}

/// An int64 tensor of `shape`.
pub(super) fn i64_tensor(shape: [usize; 2], data: Vec<i64>, model: &str) -> Result<DynValue> {
    Tensor::from_array((shape, data)).map(|t| t.into_dyn()).map_err(inference(model))
}

/// Refuses a graph with an input steadytext does not feed, in one line saying which and why.
pub(super) fn check_inputs(session: &Session, model: &str, what: &str, fed: &[&str], past: &[&str]) -> Result<()> {
    match session.inputs().iter().map(|i| i.name()).find(|n| !fed.contains(n) && !past.contains(n)) {
        None => Ok(()),
        Some(other) => Err(Error::model(
            model,
            format!(
                "the {what} ONNX graph takes input `{other}`, which steadytext does not feed (it feeds {}{}); use an export without it",
                fed.join(", "),
                if past.is_empty() { "" } else { " and the KV cache" }
            ),
        )),
    }
}

/// Checks that a `what` graph (encoder, cross-encoder) takes `input_ids` and `attention_mask`,
/// and nothing but those, `token_type_ids`, the `optional` inputs and the `past` cache; whether
/// it takes `token_type_ids`.
pub(super) fn bert_inputs(
    session: &Session,
    model: &str,
    what: &str,
    optional: &[&str],
    past: &[&str],
) -> Result<bool> {
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for required in ["input_ids", "attention_mask"] {
        if !names.contains(&required) {
            return Err(Error::model(model, format!("{what} ONNX graph has no `{required}` input")));
        }
    }
    let fed: Vec<&str> = ["input_ids", "attention_mask", "token_type_ids"].iter().chain(optional).copied().collect();
    check_inputs(session, model, what, &fed, past)?;
    Ok(names.contains(&"token_type_ids"))
}

/// The shared MiniLM encoder's ONNX file (`STEADYTEXT_MODEL_DIR`, else `../shared/models`).
#[cfg(test)]
pub(super) fn shared_minilm_path() -> std::path::PathBuf {
    let dir = std::env::var_os("STEADYTEXT_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    dir.join("all-MiniLM-L6-v2/model.onnx")
}

/// A session of the shared MiniLM encoder, or of `rewritten` (its graph rewritten).
#[cfg(test)]
pub(super) fn shared_minilm_session(rewritten: Option<&[u8]>) -> Session {
    build_session(test_env(), &shared_minilm_path(), rewritten, "minilm", TEST_SETTINGS, Shapes::Repeating).unwrap().0
}

/// A session of the shared MiniLM encoder.
#[cfg(test)]
pub(super) fn shared_minilm() -> Session {
    shared_minilm_session(None)
}

/// ONNX Runtime from `ORT_DYLIB_PATH` (what `make` sets up), its hash not checked.
#[cfg(test)]
pub(super) fn test_env() -> &'static ort::environment::Environment {
    let spec = crate::runtime::RuntimeSpec::resolve(None, Some("any"));
    crate::runtime::environment(&spec).expect("ONNX Runtime loads (ORT_DYLIB_PATH)")
}

#[cfg(test)]
const TEST_SETTINGS: SessionSettings = SessionSettings { intra_threads: 1, device: Device::Cpu, cuda_device_id: 0 };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_input_that_is_not_fed_is_refused_by_name() {
        let session = shared_minilm();
        assert!(bert_inputs(&session, "minilm", "encoder", &[], &[]).unwrap(), "MiniLM takes token_type_ids");
        let err = check_inputs(&session, "minilm", "encoder", &["input_ids", "attention_mask"], &[]).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("`token_type_ids`") && err.contains("it feeds input_ids, attention_mask"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_onnx_says_to_fetch_the_model_again() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("model.onnx");
        std::fs::write(&bad, b"not a model").unwrap();
        let Err(err) = build_session(test_env(), &bad, None, "bad", TEST_SETTINGS, Shapes::PerStep) else {
            panic!("a file that is not ONNX loaded");
        };
        let err = err.to_string();
        assert!(err.contains("fetch the model again"), "{err}");
    }

    /// Set in the child process of the test below.
    const FIRST_SESSIONS_CHILD: &str = "STEADYTEXT_TEST_FIRST_SESSIONS";

    #[test]
    fn the_first_sessions_of_a_process_created_at_once_all_load() {
        if std::env::var_os(FIRST_SESSIONS_CHILD).is_some() {
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        start.wait();
                        shared_minilm();
                    });
                }
            });
            return;
        }
        // Each round is a process of its own, where no session came before (without the turn taking,
        // 20 of 20 such processes failed here).
        for round in 0..3 {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "engine::backend::session::tests::the_first_sessions_of_a_process_created_at_once_all_load",
                ])
                .args(["--nocapture", "--test-threads=1"])
                .env(FIRST_SESSIONS_CHILD, "1")
                .output()
                .unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.contains("1 passed"), "round {round}: {said}");
        }
    }
}
