//! What every generation route shares, whichever API it speaks: running the `generate` method
//! now or as a stream (errors before the first piece keep their own status), the answer's id and
//! route key, and the text of a streamed answer with tool calls held back.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::run::{Event, Ready};
use super::ApiError;
use crate::cache::generation_route_key;
use crate::core::validate;
use crate::daemon::methods::generate as methods;
use crate::engine::tools::{CallSyntax, ToolChoice};
use crate::model::ModelInfo;
use crate::protocol::{wire, GenerateParams, GenerateResult, Method, ROUTE_KEY_HEADER};

/// Response header naming the engine fingerprint of the answer (equal on every replica that
/// gives the same bytes).
pub(super) const ENGINE_HEADER: &str = "x-steadytext-engine";

/// Response header saying whether an answer came from the cache (`hit` or `miss`; `partial` when
/// only some of an embedding request's inputs did).
pub(super) const CACHE_HEADER: &str = "x-steadytext-cache";

/// The answer's `id`: a hash of the params in the wire's JSON form (the form ids have always been
/// made from, so a request keeps its id), under `prefix`.
pub(super) fn answer_id(prefix: &str, params: &GenerateParams) -> Result<String, ApiError> {
    let text = wire::encode(params).map_err(|e| ApiError::internal(&e.to_string()))?;
    Ok(format!("{prefix}{}", &hex::encode(Sha256::digest(text.get()))[..24]))
}

/// The route key of a generation (empty when its params do not normalize: the call refuses them
/// and says why).
pub(super) fn route_key(ready: &Ready, params: &GenerateParams) -> String {
    validate::generate(params, &(&*ready.daemon.config()).into())
        .map(|r| generation_route_key(params.model.as_deref(), &r))
        .unwrap_or_default()
}

/// Runs a generation and waits for its answer.
pub(super) async fn generate_now(ready: &Ready, params: GenerateParams) -> Result<GenerateResult, ApiError> {
    ready.run(Method::Generate, |call| Box::pin(methods::generate(call, params, false))).await
}

/// A streamed generation under way: the model that answers, its first event after that, and
/// the rest.
pub(super) struct Streaming {
    pub(super) info: ModelInfo,
    pub(super) first: Event<GenerateResult>,
    pub(super) events: mpsc::Receiver<Event<GenerateResult>>,
    /// When the model was known (it had loaded) and when the first event after it came (the
    /// prompt was read and a first piece made, or a cached answer found).
    pub(super) model_at: Instant,
    pub(super) first_at: Instant,
}

impl Streaming {
    /// Starts it; errors found before the first piece (bad params, overload) are returned here,
    /// so they get their own HTTP status; later ones arrive as an event.
    pub(super) async fn start(ready: &Ready, params: GenerateParams) -> Result<Self, ApiError> {
        let mut events =
            ready.spawn(Some(Method::GenerateStream), move |call| Box::pin(methods::generate(call, params, true)));
        let mut model = None;
        let first = loop {
            match events.recv().await.ok_or_else(|| ApiError::internal("the request ended without a result"))? {
                Event::Model(info) => model = Some((info, Instant::now())),
                Event::Done(Err(error)) => return Err(error.into()),
                event => break event,
            }
        };
        let (info, model_at) = model.ok_or_else(|| ApiError::internal("the answer named no model"))?;
        Ok(Streaming { info, first, events, model_at, first_at: Instant::now() })
    }
}

/// A streamed answer: its server-sent events as the body, with the engine fingerprint and the
/// route key in headers.
pub(super) fn event_response<S>(engine: String, route: String, frames: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let headers = [
        (header::CONTENT_TYPE.as_str(), "text/event-stream".to_string()),
        (ENGINE_HEADER, engine),
        (ROUTE_KEY_HEADER, route),
    ];
    ([(header::CACHE_CONTROL, "no-cache")], headers, Body::from_stream(frames)).into_response()
}

/// One server-sent event of `data` (and its `event` name, for the APIs that name them).
pub(super) fn sse(event: Option<&str>, data: &serde_json::Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// The content of a streamed chat answer, as it grows: text that may still turn out to open a
/// tool call (trailing blanks, a part of the opening tag) is held back until it is known, so the
/// pieces add up to the message's `content` and never show call markup.
#[derive(Default)]
pub(super) struct ContentStream {
    text: String,
    shown: usize,
    /// Whether the answer may hold calls (then every known syntax's opening is held back: the
    /// front does not know the model's).
    may_call: bool,
}

impl ContentStream {
    /// For a request's params: call markup is held back when the request may call tools.
    pub(super) fn for_params(params: &GenerateParams) -> Self {
        let may_call = !params.tools.is_empty() && params.tool_choice != Some(ToolChoice::None);
        ContentStream { may_call, ..Default::default() }
    }

    /// What of `piece` (and what it held) may be shown now.
    pub(super) fn piece(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        if !self.may_call {
            return self.show(self.text.len());
        }
        let visible = CallSyntax::ALL
            .iter()
            .map(|syntax| {
                let opening = syntax.opening();
                match self.text.find(opening) {
                    Some(at) => self.text[..at].trim_end().len(),
                    None => {
                        let partial =
                            (1..opening.len()).rev().find(|&n| self.text.ends_with(&opening[..n])).unwrap_or(0);
                        self.text[..self.text.len() - partial].trim_end().len()
                    }
                }
            })
            .min()
            .unwrap_or(self.text.len());
        self.show(visible)
    }

    /// At the end: the rest of the final content.
    pub(super) fn finish(&mut self, content: &str) -> String {
        content.get(self.shown..).unwrap_or_default().to_string()
    }

    fn show(&mut self, upto: usize) -> String {
        let out = self.text.get(self.shown..upto.max(self.shown)).unwrap_or_default().to_string();
        self.shown = self.shown.max(upto);
        out
    }
}
