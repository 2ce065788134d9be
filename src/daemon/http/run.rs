//! Running a request's work from a route: the [`Ready`] extractor (the daemon serves, the key
//! was presented), then either inline ([`Ready::run`]: the answer is awaited by the handler) or
//! in a task of its own whose pieces and result reach the response body as [`Event`]s
//! ([`Ready::spawn`]). Either way through [`Call`], so every route is logged and counted as its
//! method is on the sockets.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};
use tokio::sync::mpsc;

use super::super::call::{Call, Whole};
use super::super::state::Daemon;
use super::conn::Connection;
use super::error::ApiError;
use super::Front;
use crate::core::{PieceSink, SinkFuture};
use crate::error::Result;
use crate::model::ModelInfo;
use crate::protocol::Method;

/// The header Anthropic's clients present the key in (`Authorization: Bearer` works as well).
const API_KEY_HEADER: &str = "x-api-key";

/// Stream events buffered per request before the sender waits for the client.
const EVENTS_BUFFERED: usize = 64;

/// A request's work: a future borrowing its [`Call`].
pub(crate) type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// What a running request sends to its HTTP response.
pub(crate) enum Event<T> {
    /// The model that answers (before any piece).
    Model(ModelInfo),
    /// A stream piece.
    Piece(String),
    /// The result.
    Done(Result<T>),
}

/// A request that may be served: the daemon is loaded and not stopping, and a TCP client
/// presented the API key (its connection then takes its slots).
pub(crate) struct Ready {
    pub(crate) daemon: Arc<Daemon>,
    connection: Arc<Connection>,
}

impl FromRequestParts<Arc<Front>> for Ready {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, front: &Arc<Front>) -> Result<Self, ApiError> {
        let daemon = front.ready()?.clone();
        let connection =
            parts.extensions.get::<Arc<Connection>>().cloned().ok_or_else(|| ApiError::internal("no connection"))?;
        if connection.peer().is_tcp() {
            let header_text = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
            let given = header_text(header::AUTHORIZATION.as_str())
                .and_then(|v| v.strip_prefix("Bearer "))
                .or_else(|| header_text(API_KEY_HEADER));
            let valid = match (daemon.api_key(), given) {
                (Some(key), Some(given)) => key.verify(given.trim()),
                _ => false,
            };
            if !valid {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send `Authorization: Bearer KEY` (or `x-api-key: KEY`) with the daemon's key",
                )
                .kind("invalid_request_error")
                .code("invalid_api_key"));
            }
            connection.authenticate(front, daemon.metrics().connections())?;
        }
        Ok(Ready { daemon, connection })
    }
}

impl Ready {
    /// Runs `work` now, logged and counted as `method`; the client hanging up cancels it.
    pub(crate) async fn run<T, F>(&self, method: Method, work: F) -> Result<T, ApiError>
    where
        F: for<'c, 'd> FnOnce(&'c mut Call<'d>) -> Work<'c, T>,
    {
        let _busy = self.daemon.metrics().request();
        let connection = self.connection.clone();
        let mut sink = Whole(move || connection.hung_up());
        let mut call = Call::new(&self.daemon, &mut sink, self.connection.peer());
        let result = work(&mut call).await;
        call.finish(Some(method), &result);
        result.map_err(ApiError::from)
    }

    /// Runs `work` in its own task (tracked for the drain), logged and counted as `method` (None:
    /// `work` does it); its pieces and then its result arrive as events. A client that leaves them
    /// unread for `send_timeout_secs`, or hangs up, cancels it.
    pub(crate) fn spawn<T, F>(&self, method: Option<Method>, work: F) -> mpsc::Receiver<Event<T>>
    where
        T: Send + 'static,
        F: for<'c, 'd> FnOnce(&'c mut Call<'d>) -> Work<'c, T> + Send + 'static,
    {
        let (events, receiver) = mpsc::channel(EVENTS_BUFFERED);
        let deadline = Duration::from_secs(self.daemon.config().daemon.send_timeout_secs);
        let (daemon, connection) = (self.daemon.clone(), self.connection.clone());
        self.daemon.track(async move {
            let _busy = daemon.metrics().request();
            let peer = connection.peer();
            let mut sink = BodySink { events: events.clone(), deadline, broken: false, connection };
            let mut call = Call::new(&daemon, &mut sink, peer);
            let result = work(&mut call).await;
            if let Some(method) = method {
                call.finish(Some(method), &result);
            }
            drop(call);
            let _ = tokio::time::timeout(deadline, events.send(Event::Done(result))).await;
        });
        receiver
    }
}

/// The sink of a spawned request: events go to its response body through a bounded channel.
struct BodySink<T> {
    events: mpsc::Sender<Event<T>>,
    deadline: Duration,
    broken: bool,
    connection: Arc<Connection>,
}

impl<T: Send> PieceSink for BodySink<T> {
    fn piece(&mut self, text: String) -> SinkFuture<'_> {
        Box::pin(async move {
            if self.broken {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let sent = tokio::time::timeout(self.deadline, self.events.send(Event::Piece(text))).await;
            self.broken = !matches!(sent, Ok(Ok(())));
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the HTTP client stopped reading")),
            }
        })
    }

    fn is_broken(&self) -> bool {
        self.broken
    }

    /// The response was dropped, or a TCP client hung up (a request it pipelined is not run for
    /// nobody).
    fn peer_gone(&self) -> bool {
        self.events.is_closed() || self.connection.hung_up()
    }

    fn model(&mut self, info: &ModelInfo) {
        // Room for it is certain: it is the first event.
        let _ = self.events.try_send(Event::Model(info.clone()));
    }
}

/// The response body of a spawned request: `first` (an event already taken) and then each event
/// mapped to frames by `frame`, ending after the result.
pub(crate) fn event_stream<T, F>(
    first: Option<Event<T>>,
    events: mpsc::Receiver<Event<T>>,
    frame: F,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send
where
    T: Send + 'static,
    F: FnMut(Event<T>) -> Vec<Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    futures_util::stream::unfold((first, events, frame, false), |(first, mut events, mut frame, done)| async move {
        if done {
            return None;
        }
        let event = match first {
            Some(event) => event,
            None => events.recv().await?,
        };
        let last = matches!(event, Event::Done(_));
        let frames = futures_util::stream::iter(frame(event).into_iter().map(Ok));
        Some((frames, (None, events, frame, last)))
    })
    .flatten()
}
