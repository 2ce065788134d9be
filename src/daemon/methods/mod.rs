//! The daemon's methods: typed params in, the [`crate::core`] use case (or the daemon's own
//! state), typed result out. [`protocol::Method`](crate::protocol::Method) owns the names; the
//! `match` in [`dispatch`] is the one table.

mod auth;
mod cache;
pub(crate) mod generate;
mod ping;
mod reload;
mod status;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::{EmbedParams, Method, VectorEncoding};

use super::call::Call;

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

/// A result as it goes on the wire.
fn encode<T: Serialize>(result: T) -> Result<Box<RawValue>> {
    crate::protocol::wire::encode(&result)
        .map_err(|e| Error::engine("the daemon", format!("cannot encode the result: {e}")))
}

/// Runs `method` with its raw params.
async fn dispatch(call: &mut Call<'_>, method: Method, params: Value) -> Result<Box<RawValue>> {
    match method {
        Method::Auth => encode(auth::call(call, parse(params)?)?),
        Method::Ping => encode(ping::call(parse(params)?)),
        Method::Status => encode(status::status(call, parse(params)?)),
        Method::Metrics => encode(status::metrics(call, parse(params)?)),
        Method::Generate => encode(generate::generate(call, parse(params)?, false).await?),
        Method::GenerateStream => encode(generate::generate(call, parse(params)?, true).await?),
        Method::Embed => {
            let params: EmbedParams = parse(params)?;
            match params.encoding_format {
                VectorEncoding::Float => encode(generate::embed(call, params).await?),
                VectorEncoding::Base64 => encode(generate::embed(call, params).await?.into_base64()),
            }
        }
        Method::Rerank => encode(generate::rerank(call, parse(params)?).await?),
        Method::CountTokens => encode(generate::count_tokens(call, parse(params)?).await?),
        Method::Tokenize => encode(generate::tokenize(call, parse(params)?).await?),
        Method::Detokenize => encode(generate::detokenize(call, parse(params)?).await?),
        Method::CacheStats => encode(cache::stats(call, parse(params)?)?),
        Method::CacheClear => encode(cache::clear(call, parse(params)?)?),
        Method::CacheSnapshot => encode(cache::snapshot(call, parse(params)?)?),
        Method::Reload => encode(reload::call(call.daemon, parse(params)?).await?),
    }
}

/// Runs the method `name` (a JSON-RPC request's, on a socket or `/v1/rpc`), with its log line and
/// metrics; admin methods for admins only.
pub(crate) async fn run(call: &mut Call<'_>, name: &str, params: Value) -> Result<Box<RawValue>> {
    let method = Method::from_name(name);
    let result = match method {
        None => Err(Error::UnknownMethod { name: name.to_string(), known: Method::names() }),
        Some(m) if m.is_admin() => match call.daemon.require_admin(&call.peer, m.name()) {
            Ok(()) => dispatch(call, m, params).await,
            Err(e) => Err(e),
        },
        Some(m) => dispatch(call, m, params).await,
    };
    call.finish(method, &result);
    result
}
