//! Decoding request lines: one JSON-RPC request, or a batch of them. Pure functions over bytes
//! (the daemon's connection layer uses them; the fuzz target `protocol_line` drives them).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{RpcError, MAX_BATCH_REQUESTS, PIECE_NOTIFICATION};
use crate::error::Error;

/// A request as it arrived; its id is kept as raw JSON and echoed byte for byte.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incoming<'a> {
    jsonrpc: String,
    /// The method name.
    pub method: String,
    /// The params (an object, or absent).
    #[serde(default)]
    pub params: Value,
    /// Absent: a notification. Present (`null` included): answered with this id.
    #[serde(default, borrow, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A request that cannot run, with the id to answer it with (None: `null`).
pub type Refused<'a> = (Option<&'a RawValue>, Error);

/// What one line holds.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// One request (or why it is not one).
    One(Result<Incoming<'a>, Refused<'a>>),
    /// A batch: each entry decoded on its own.
    Batch(Vec<Result<Incoming<'a>, Refused<'a>>>),
    /// A line that is not a usable batch (not JSON, empty, too many entries).
    BadBatch(Error),
}

/// Decodes a line: a JSON array is a batch, anything else one request.
pub fn decode(line: &[u8]) -> Decoded<'_> {
    if line.trim_ascii_start().first() != Some(&b'[') {
        return Decoded::One(decode_one(line));
    }
    let items: Vec<&RawValue> = match serde_json::from_slice(line) {
        Ok(items) => items,
        Err(e) => return Decoded::BadBatch(Error::Parse(e.to_string())),
    };
    if items.is_empty() || items.len() > MAX_BATCH_REQUESTS {
        return Decoded::BadBatch(Error::NotJsonRpc(format!("a batch holds 1 to {MAX_BATCH_REQUESTS} requests")));
    }
    Decoded::Batch(items.into_iter().map(|item| decode_one(item.get().as_bytes())).collect())
}

/// Decodes one request object.
pub fn decode_one(line: &[u8]) -> Result<Incoming<'_>, Refused<'_>> {
    if line.trim_ascii_start().first() != Some(&b'{') {
        // serde would read a JSON array positionally as a struct: only objects are requests.
        let error = match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            Ok(_) => Error::NotJsonRpc("a request is a JSON object".into()),
            Err(e) => Error::Parse(e.to_string()),
        };
        return Err((None, error));
    }
    let request: Incoming = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) if e.is_syntax() || e.is_eof() => return Err((None, Error::Parse(e.to_string()))),
        Err(e) => return Err((readable_id(line), Error::NotJsonRpc(format!("not a JSON-RPC 2.0 request: {e}")))),
    };
    if request.jsonrpc != "2.0" {
        return Err((request.id, Error::NotJsonRpc("jsonrpc must be \"2.0\"".into())));
    }
    if let Some(bad) = request.id.filter(|id| !is_valid_id(id)) {
        return Err((None, Error::NotJsonRpc(format!("the id must be a string, a number or null, not {}", bad.get()))));
    }
    Ok(request)
}

/// JSON-RPC ids are strings, numbers or null.
fn is_valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
}

/// The id of an object that parsed as JSON but not as a request, when it has a usable one.
fn readable_id(line: &[u8]) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_slice::<IdOnly>(line).ok()?.id.filter(|id| is_valid_id(id))
}

/// Writes an `f32` as the `f64` it widens to (`0.004130002` as `0.004130002111196518`): the
/// digits results have always had on the wire, since they were once encoded through
/// `serde_json::Value`, which holds `f64`. Both read back to the same `f32` bits; the bytes of an
/// answer stay what they were.
struct WidenedFloats;

impl serde_json::ser::Formatter for WidenedFloats {
    fn write_f32<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, value: f32) -> std::io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// `value` as JSON text in the wire's form (see [`WidenedFloats`]).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Box<RawValue>> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, WidenedFloats))?;
    RawValue::from_string(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// A response line; `id` is the request's, as it was sent (byte for byte).
#[derive(Serialize)]
pub struct Reply<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
    id: &'a RawValue,
}

impl<'a> Reply<'a> {
    /// The response to the request `id`: its result, or its error.
    pub fn new(id: &'a RawValue, outcome: Result<Box<RawValue>, Error>) -> Self {
        match outcome {
            Ok(result) => Reply { jsonrpc: "2.0", result: Some(result), error: None, id },
            Err(e) => Reply::error(id, &e),
        }
    }

    /// An error response.
    pub fn error(id: &'a RawValue, error: &Error) -> Self {
        Reply { jsonrpc: "2.0", result: None, error: Some(RpcError::from(error)), id }
    }

    /// The response as one JSON text (without the newline).
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a response always serializes")
    }
}

/// A `generate.piece` notification carrying `text` for the request `id` (without the newline).
pub fn piece(id: &RawValue, text: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Params<'a> {
        id: &'a RawValue,
        text: &'a str,
    }
    #[derive(Serialize)]
    struct Notification<'a> {
        jsonrpc: &'static str,
        method: &'static str,
        params: Params<'a>,
    }
    let notification = Notification { jsonrpc: "2.0", method: PIECE_NOTIFICATION, params: Params { id, text } };
    serde_json::to_vec(&notification).expect("a notification always serializes")
}

/// The `null` id, for answers to requests whose id could not be read.
pub fn null_id() -> &'static RawValue {
    static NULL: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| RawValue::from_string("null".into()).expect("null is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_decode_into_requests_batches_and_refusals() {
        let Decoded::One(Ok(r)) = decode(br#"{"jsonrpc":"2.0","method":"ping","id":null}"#) else { panic!() };
        assert_eq!((r.method.as_str(), r.id.map(RawValue::get)), ("ping", Some("null")));
        let Decoded::One(Ok(r)) = decode(br#"{"jsonrpc":"2.0","method":"ping"}"#) else { panic!() };
        assert!(r.id.is_none(), "a notification");
        let Decoded::One(Err((id, Error::NotJsonRpc(_)))) = decode(br#"{"jsonrpc":"2.0","method":"p","id":3,"x":1}"#)
        else {
            panic!()
        };
        assert_eq!(id.map(RawValue::get), Some("3"));
        assert!(matches!(decode(b"[]"), Decoded::BadBatch(_)));
        assert!(matches!(decode(b"[1, {}]"), Decoded::Batch(v) if v.len() == 2 && v.iter().all(Result::is_err)));
        assert!(matches!(decode(b"{oops"), Decoded::One(Err((None, Error::Parse(_))))));
        assert!(matches!(decode(br#"["jsonrpc","2.0"]"#), Decoded::Batch(_)));
        assert!(matches!(decode(br#""str""#), Decoded::One(Err((None, Error::NotJsonRpc(_))))));
    }

    #[test]
    fn floats_keep_the_digits_the_wire_always_had() {
        let result: crate::protocol::EmbedResult = crate::protocol::EmbedResult {
            embeddings: vec![vec![0.004130002, -3.7855227e-33, 1.0]],
            model: "m".into(),
            model_digest: "sha256:0".into(),
            engine_fingerprint: String::new(),
            cached: 0,
        };
        let old = serde_json::to_value(&result).unwrap().to_string();
        assert_eq!(encode(&result).unwrap().get(), old);
        assert!(old.contains("0.004130002111196518"), "{old}");
    }
}
