//! The daemon's methods, one file each. [`methods!`] below is the one table: it gives the method
//! list (error messages, metrics, the protocol doc's test) and the dispatch. Adding a method
//! means a file here with `call(&mut Call, Params) -> Result<R>` and one line in the table.

mod auth;
mod cache;
mod embed;
mod generate;
mod metrics;
mod ping;
mod reload;
mod rerank;
mod status;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

use super::connection::{Out, Served};
use super::http::BodySink;
use super::state::Daemon;

/// How often a request waiting for a worker checks whether its client hung up.
const PEER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// What a method gets: the daemon, the request's id and connection (for stream pieces), and
/// where it records what it served for the log line.
pub(crate) struct Call<'a> {
    /// Shared state.
    pub(crate) daemon: &'a Daemon,
    /// The request's id, as sent.
    pub(crate) id: &'a serde_json::value::RawValue,
    /// Where stream pieces go.
    pub(crate) out: Sink<'a>,
    /// Who sent the request.
    pub(crate) peer: super::peer::Peer,
    /// Filled in by the method.
    pub(crate) served: Served,
}

/// Where a method's stream pieces go, and how it learns that its client left.
pub(crate) enum Sink<'a> {
    /// A JSON-RPC connection: pieces are `generate.piece` notifications.
    Line(&'a mut Out),
    /// An HTTP response body (server-sent events or NDJSON).
    Body(&'a mut BodySink),
}

impl Sink<'_> {
    /// Sends one piece of the request `id`; fails when the client stopped reading.
    pub(crate) async fn piece(&mut self, id: &serde_json::value::RawValue, text: String) -> std::io::Result<()> {
        match self {
            Sink::Line(out) => out.piece(id, text).await,
            Sink::Body(body) => body.piece(text).await,
        }
    }

    /// Whether a piece could not be delivered (the request is then cancelled).
    pub(crate) fn is_broken(&self) -> bool {
        match self {
            Sink::Line(out) => out.is_broken(),
            Sink::Body(body) => body.is_broken(),
        }
    }

    /// Whether the client has gone.
    pub(crate) fn peer_gone(&self) -> bool {
        match self {
            Sink::Line(out) => out.peer_gone(),
            Sink::Body(body) => body.is_closed(),
        }
    }
}

/// Parses a method's params, which must be an object (serde would read an array positionally);
/// absent params read as `{}`.
fn parse<T: DeserializeOwned>(params: Value) -> Result<T> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => params,
        _ => return Err(Error::InvalidRequest("params must be a JSON object (named parameters)".into())),
    };
    serde_json::from_value(params).map_err(|e| Error::InvalidRequest(format!("invalid params: {e}")))
}

fn to_value<T: Serialize>(result: T) -> Result<Value> {
    serde_json::to_value(result).map_err(|e| Error::engine("daemon", format!("cannot encode the result: {e}")))
}

macro_rules! methods {
    ($($name:literal => $module:ident::$function:ident,)*) => {
        /// Every method the daemon serves, in the order `docs/protocol.md` lists them.
        pub const NAMES: &[&str] = &[$($name),*];

        /// Runs the method `name` with its raw params.
        pub(crate) async fn dispatch(call: &mut Call<'_>, name: &str, params: Value) -> Result<Value> {
            match name {
                $($name => to_value($module::$function(call, parse(params)?).await?),)*
                other => Err(Error::UnknownMethod { name: other.to_string(), known: NAMES.join(", ") }),
            }
        }
    };
}

methods! {
    "auth" => auth::call,
    "ping" => ping::call,
    "status" => status::call,
    "metrics" => metrics::call,
    "generate" => generate::call,
    "generate_stream" => generate::call_stream,
    "embed" => embed::call,
    "rerank" => rerank::call,
    "cache.stats" => cache::stats,
    "cache.clear" => cache::clear,
    "cache.snapshot" => cache::snapshot,
    "reload" => reload::call,
}

/// Runs the method `name` for a JSON-RPC or HTTP client, with its log line and metrics;
/// `started` is when the request arrived.
pub(crate) async fn run(call: &mut Call<'_>, name: &str, params: Value, started: std::time::Instant) -> Result<Value> {
    let request_id = call.daemon.next_request_id();
    let result = dispatch(call, name, params).await;
    let Served { model, cached } = &call.served;
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    match &result {
        Ok(_) if *cached || matches!(name, "ping" | "status" | "metrics") => {
            tracing::debug!(request_id, method = %name, duration_ms, cached, model, "request served")
        }
        Ok(_) => tracing::info!(request_id, method = %name, duration_ms, cached, model, "request served"),
        Err(e) => tracing::warn!(request_id, method = %name, duration_ms, error = %e, "request failed"),
    }
    call.daemon.metrics().record(name, started.elapsed(), result.is_ok());
    result
}

/// Params of methods that take none (anything given is ignored, as before version 1 had them).
#[derive(serde::Deserialize)]
pub(crate) struct NoParams {}

#[cfg(test)]
mod tests {
    use super::NAMES;

    #[test]
    fn the_protocol_doc_lists_every_method_and_no_other() {
        let doc = include_str!("../../../docs/protocol.md");
        let documented: Vec<&str> =
            doc.lines().filter_map(|l| l.strip_prefix("### `")).filter_map(|l| l.split('`').next()).collect();
        assert_eq!(documented, NAMES, "docs/protocol.md method headings (### `name`) must follow the table");
    }
}
