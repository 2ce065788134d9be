//! How a command is served: by the daemon (or a fleet of them) when one answers, else in this
//! process (direct mode) when that is allowed, with the same bytes either way. The policy `stctl`
//! follows, in the library so that it is one typed thing a test can drive: `--no-daemon` (or
//! `STEADYTEXT_DISABLE_DAEMON`) serves in-process; `--daemon-only` never does; a daemon that is
//! there but refuses us (key, certificate) is an error, not a reason to run the model here; a
//! fleet falls back only with `--fallback-direct`, and never to an engine of another fingerprint.

use std::sync::Mutex;

use crate::cache;
use crate::config::Config;
use crate::core::validate::{self, RequestSettings};
use crate::core::{PieceSink, SinkFuture};
use crate::direct;
use crate::protocol::{
    CacheClearParams, CacheStats, Cleared, EmbedParams, EmbedResult, GenerateParams, GenerateResult, Method, NoParams,
    RerankParams, RerankResult, SnapshotInfo,
};

use super::{Client, ClientError, ClientOptions, Fleet, FleetError, Target};

/// Where a session sends its requests and what it may do when no daemon answers.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The daemon, or the fleet's endpoints.
    pub targets: Vec<Target>,
    /// Key, deadlines, retries.
    pub client: ClientOptions,
    /// With a fleet: use only endpoints with this engine fingerprint.
    pub fingerprint: Option<String>,
    /// Never serve in-process.
    pub daemon_only: bool,
    /// Always serve in-process.
    pub no_daemon: bool,
    /// Serve in-process when no daemon can answer (a single daemon's default).
    pub fallback_direct: bool,
    /// Say on stderr which mode served.
    pub verbose: bool,
}

/// Which mode answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A daemon.
    Daemon,
    /// This process.
    Direct,
}

impl Served {
    /// `daemon` or `direct`.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Daemon => "daemon",
            Served::Direct => "direct",
        }
    }
}

/// Why a command could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The daemon (or fleet) failed the request.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// `--daemon-only`, and no daemon answered.
    #[error(
        "--daemon-only: no daemon (start it with `systemctl start steadytext.socket`, or drop --daemon-only): {0}"
    )]
    DaemonOnly(FleetError),
    /// What only a daemon can answer, and none answered.
    #[error("no daemon to ask; start it with `systemctl start steadytext.socket`: {0}")]
    NoDaemon(FleetError),
    /// Direct mode's engine would answer with other bits than the daemons'.
    #[error("direct mode's engine fingerprint {here} ({summary}) is not the daemons' {daemons}: its answers could differ in bits")]
    Fingerprint {
        /// This process's engine.
        here: String,
        /// What it is.
        summary: String,
        /// The daemons' engine.
        daemons: String,
    },
    /// Direct mode failed.
    #[error(transparent)]
    Direct(#[from] crate::Error),
}

/// Direct mode's pieces, handed on at once.
struct Pieces<'a> {
    piece: &'a (dyn Fn(&str) + Sync),
    stream: bool,
}

impl PieceSink for Pieces<'_> {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        if self.stream {
            (self.piece)(&text);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_broken(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> bool {
        false
    }
}

/// How a command is served.
enum Mode {
    Daemon(Box<Fleet>),
    Direct,
}

/// One command's way to the daemon or to direct mode.
pub struct Session {
    config: Config,
    settings: SessionSettings,
}

impl Session {
    /// A session of `config` with `settings`.
    pub fn new(config: Config, settings: SessionSettings) -> Self {
        Session { config, settings }
    }

    /// The configuration (direct mode's, and the client's defaults).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The daemon's (or the first endpoint's) address.
    pub fn target(&self) -> &Target {
        &self.settings.targets[0]
    }

    /// Key, deadlines, retries.
    pub fn client_options(&self) -> &ClientOptions {
        &self.settings.client
    }

    /// Says `msg` on stderr when verbose.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if self.settings.verbose {
            eprintln!("stctl: {msg}");
        }
    }

    fn targets(&self) -> String {
        self.settings.targets.iter().map(Target::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Opens the daemon (or fleet), saying which endpoints it refused.
    pub fn fleet(&self) -> Result<Fleet, FleetError> {
        let fleet =
            Fleet::connect(&self.settings.targets, self.settings.client.clone(), self.settings.fingerprint.as_deref())?;
        for r in fleet.refused() {
            eprintln!("stctl: warning: not using {}: {}", r.target, r.reason);
        }
        Ok(fleet)
    }

    /// Whether `e` lets direct mode serve the request.
    fn may_fall_back(&self, e: &FleetError) -> bool {
        e.allows_fallback() && !self.settings.daemon_only && self.settings.fallback_direct
    }

    /// Why direct mode cannot stand in for daemons with `fingerprint`, if it cannot.
    fn check_direct(&self, fingerprint: Option<&str>) -> Result<(), SessionError> {
        let Some(daemons) = fingerprint else { return Ok(()) };
        let here = crate::engine::fingerprint::fingerprint(&self.config)?;
        if here.id != daemons {
            return Err(SessionError::Fingerprint { here: here.id, summary: here.summary, daemons: daemons.into() });
        }
        Ok(())
    }

    /// Connects to the daemon(s), or decides on direct mode.
    fn mode(&self) -> Result<Mode, SessionError> {
        if self.settings.no_daemon {
            self.note("direct mode (daemon disabled)");
            return Ok(Mode::Direct);
        }
        match self.fleet() {
            Ok(fleet) => {
                self.note(format_args!("using the daemon at {}", self.targets()));
                Ok(Mode::Daemon(Box::new(fleet)))
            }
            Err(e) if e.allows_fallback() && self.settings.daemon_only => Err(SessionError::DaemonOnly(e)),
            Err(e) if !self.may_fall_back(&e) => Err(e.into()),
            Err(e) => {
                self.note(format_args!("{e}; falling back to direct mode"));
                self.check_direct(self.settings.fingerprint.as_deref())?;
                Ok(Mode::Direct)
            }
        }
    }

    /// Asks the daemon `method` (without parameters): what only the daemon can answer.
    pub fn ask<R: serde::de::DeserializeOwned>(&self, method: Method) -> Result<R, SessionError> {
        let mut fleet = self.fleet().map_err(|e| match e {
            e if e.allows_fallback() => SessionError::NoDaemon(e),
            other => other.into(),
        })?;
        Ok(fleet.call(None, |c| c.request(method, &NoParams {}))?)
    }

    /// Runs `daemon_call` on the daemon the route key picks, or `direct` when falling back is
    /// allowed.
    pub fn serve<R>(
        &self,
        route_key: Option<&str>,
        mut daemon_call: impl FnMut(&mut Client) -> Result<R, ClientError>,
        direct: impl FnOnce() -> crate::Result<R>,
    ) -> Result<(R, Served), SessionError> {
        if let Mode::Daemon(mut fleet) = self.mode()? {
            match fleet.call(route_key, &mut daemon_call) {
                Ok(r) => {
                    if let Some(t) = fleet.answered_by() {
                        self.note(format_args!("answered by {t}"));
                    }
                    return Ok((r, Served::Daemon));
                }
                Err(e) if self.may_fall_back(&e) => {
                    self.note(format_args!("{e}; falling back to direct mode"));
                    self.check_direct(fleet.fingerprint())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((direct()?, Served::Direct))
    }

    /// Generates; with `stream`, pieces go to `on_piece` as they come.
    pub fn generate(
        &self,
        params: &GenerateParams,
        stream: bool,
        on_piece: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(GenerateResult, Served), SessionError> {
        let route_key = validate::generate(params, &RequestSettings::from(&self.config))
            .ok()
            .map(|r| cache::generation_route_key(params.model.as_deref(), &r));
        let method = if stream { Method::GenerateStream } else { Method::Generate };
        // Both ways may stream; only one of them runs at a time.
        let pieces = Mutex::new(on_piece);
        let piece = |text: &str| (pieces.lock().unwrap_or_else(|p| p.into_inner()))(text);
        self.serve(
            route_key.as_deref(),
            |c| c.request_streaming(method, params, &mut |text| piece(text)),
            || {
                direct::run(&self.config, async |core| {
                    core.generate(params, &mut Pieces { piece: &piece, stream }, true).await
                })
            },
        )
    }

    /// Embeds.
    pub fn embed(&self, params: &EmbedParams) -> Result<(EmbedResult, Served), SessionError> {
        let route_key = cache::embedding_route_key(params.model.as_deref(), params.mode.as_deref(), &params.texts);
        self.serve(Some(&route_key), |c| c.request(Method::Embed, params), || direct::embed(&self.config, params))
    }

    /// Reranks (routed by its query: see [`cache::rerank_route_key`]).
    pub fn rerank(&self, params: &RerankParams) -> Result<(RerankResult, Served), SessionError> {
        let route_key = cache::rerank_route_key(params.model.as_deref(), &params.query);
        self.serve(Some(&route_key), |c| c.request(Method::Rerank, params), || direct::rerank(&self.config, params))
    }

    /// The cache's figures (the daemon's, or the user's in direct mode).
    pub fn cache_stats(&self) -> Result<(CacheStats, Served), SessionError> {
        self.serve(
            None,
            |c| c.request(Method::CacheStats, &NoParams {}),
            || direct::run(&self.config, async |core| core.cache_stats()),
        )
    }

    /// Empties one cache or both.
    pub fn cache_clear(&self, params: &CacheClearParams) -> Result<(Cleared, Served), SessionError> {
        self.serve(
            None,
            |c| c.request(Method::CacheClear, params),
            || direct::run(&self.config, async |core| core.cache_clear(params)),
        )
    }

    /// Writes a snapshot now (None: direct mode with caching off).
    pub fn cache_snapshot(&self) -> Result<(Option<SnapshotInfo>, Served), SessionError> {
        self.serve(
            None,
            |c| c.request(Method::CacheSnapshot, &NoParams {}),
            || direct::run(&self.config, async |core| core.cache_snapshot()),
        )
    }
}
