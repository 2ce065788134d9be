//! What an ONNX file says about itself without loading it: the external-data files its tensors
//! live in (`model.onnx_data`, `model.onnx_data_1`, `model.onnx.data`...), its graph's inputs
//! with their element types and the operator domains it imports. Read straight from the protobuf,
//! skipping tensor bytes with seeks, so that a graph of gigabytes costs milliseconds.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use crate::error::{Error, Result};

/// Nesting deeper than this (graphs in attributes in nodes...) is refused as malformed.
const MAX_DEPTH: usize = 64;

/// The message types whose fields lead to tensors.
#[derive(Clone, Copy, PartialEq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    /// `StringStringEntryProto` (TensorProto.external_data).
    Entry,
    /// The top-level graph (ModelProto.graph): its inputs are collected, a subgraph's are not.
    TopGraph,
    /// `ValueInfoProto` (GraphProto.input).
    ValueInfo,
    /// `TypeProto` (ValueInfoProto.type).
    Type,
    /// `TypeProto.Tensor` (TypeProto.tensor_type).
    TensorType,
    /// `OperatorSetIdProto` (ModelProto.opset_import).
    OpsetId,
}

impl Message {
    /// The message type of field `number`, when it is one to descend into.
    fn child(self, number: u64) -> Option<Message> {
        use Message::*;
        match (self, number) {
            (Model, 7) => Some(TopGraph),
            (Model, 8) => Some(OpsetId),
            (TopGraph, 11) => Some(ValueInfo),
            (ValueInfo, 2) => Some(Type),
            (Type, 1) => Some(TensorType),
            (Graph | TopGraph, 1) => Some(Node),
            (Graph | TopGraph, 5) => Some(Tensor),
            (Graph | TopGraph, 15) => Some(SparseTensor),
            (Node, 5) => Some(Attribute),
            (Attribute, 5 | 10) => Some(Tensor),
            (Attribute, 6 | 11) => Some(Graph),
            (Attribute, 22 | 23) => Some(SparseTensor),
            (SparseTensor, 1 | 2) => Some(Tensor),
            (Tensor, 13) => Some(Entry),
            _ => None,
        }
    }
}

struct Reader {
    inner: BufReader<File>,
    pos: u64,
}

impl Reader {
    fn byte(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8];
        self.inner.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> std::io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n =
            i64::try_from(n).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "length overflow"))?;
        self.inner.seek_relative(n)?;
        self.pos += n as u64;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        self.inner.read_exact(&mut v)?;
        self.pos += n;
        Ok(v)
    }
}

/// What [`read`] collects.
#[derive(Debug, Default)]
struct Found {
    /// External-data locations, in file order.
    locations: Vec<String>,
    /// The top-level graph's inputs: name and element type (`None` when not a tensor).
    inputs: Vec<GraphInput>,
    /// The operator domains the model imports ("" for ONNX's own).
    domains: Vec<String>,
}

/// An input of an ONNX graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphInput {
    /// Its name.
    pub name: String,
    /// Its element type (TensorProto.DataType: 1 float32, 10 float16, 16 bfloat16, 7 int64...),
    /// when it is a tensor that says.
    pub elem_type: Option<i32>,
}

/// ONNX's code of float32 (TensorProto.DataType.FLOAT).
pub const FLOAT32: i32 = 1;

fn read(path: &Path) -> Result<Found> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let end = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = Reader { inner: BufReader::with_capacity(1 << 16, file), pos: 0 };
    let mut found = Found::default();
    walk(&mut reader, Message::Model, end, 0, &mut found).map_err(|e| malformed(path, e.to_string()))?;
    Ok(found)
}

fn malformed(path: &Path, reason: String) -> Error {
    Error::Config(format!("{} is not a valid ONNX file: {reason}", path.display()))
}

/// The external-data files the ONNX file at `path` names, relative to its folder, sorted and
/// without repeats. A location that leaves the folder (absolute, `..`) is an error.
pub fn external_data(path: &Path) -> Result<Vec<String>> {
    let mut found = read(path)?.locations;
    for location in &found {
        let p = Path::new(location);
        if location.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(malformed(path, format!("external data location {location:?} is not a file beside the graph")));
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The inputs of the ONNX file's graph, in order.
pub fn graph_inputs(path: &Path) -> Result<Vec<GraphInput>> {
    Ok(read(path)?.inputs)
}

/// The operator domains the ONNX file imports (its `opset_import`: "" for ONNX's own,
/// "com.microsoft", "ai.steadytext"...).
pub fn opset_domains(path: &Path) -> Result<Vec<String>> {
    Ok(read(path)?.domains)
}

/// Reads the fields of a `kind` message up to byte `end`, adding each external-data location and
/// top-level graph input to `found`.
fn walk(r: &mut Reader, kind: Message, end: u64, depth: usize, found: &mut Found) -> std::io::Result<()> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if depth > MAX_DEPTH {
        return Err(invalid("messages nested too deep"));
    }
    let (mut key, mut value) = (None::<Vec<u8>>, None::<Vec<u8>>);
    if kind == Message::ValueInfo {
        found.inputs.push(GraphInput { name: String::new(), elem_type: None });
    }
    while r.pos < end {
        let tag = r.varint()?;
        let (number, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = r.varint()?;
                if kind == Message::TensorType && number == 1 {
                    if let Some(input) = found.inputs.last_mut() {
                        input.elem_type = i32::try_from(v).ok();
                    }
                }
            }
            1 => r.skip(8)?,
            5 => r.skip(4)?,
            2 => {
                let len = r.varint()?;
                if len > end - r.pos {
                    return Err(invalid("a field runs past its message"));
                }
                match (kind, number, kind.child(number)) {
                    (Message::Entry, 1, _) => key = Some(r.bytes(len.min(4096))?),
                    (Message::Entry, 2, _) => value = Some(r.bytes(len.min(4096))?),
                    (Message::OpsetId, 1, _) => {
                        let domain = r.bytes(len.min(4096))?;
                        r.skip(len - len.min(4096))?;
                        found.domains.push(String::from_utf8_lossy(&domain).into_owned());
                    }
                    (Message::ValueInfo, 1, _) => {
                        let name = r.bytes(len.min(4096))?;
                        r.skip(len - len.min(4096))?;
                        if let Some(input) = found.inputs.last_mut() {
                            input.name = String::from_utf8_lossy(&name).into_owned();
                        }
                    }
                    (_, _, Some(child)) => walk(r, child, r.pos + len, depth + 1, found)?,
                    _ => r.skip(len)?,
                }
            }
            _ => return Err(invalid("unknown wire type")),
        }
    }
    if r.pos != end {
        return Err(invalid("a message runs past its end"));
    }
    if kind == Message::Entry && key.as_deref() == Some(b"location") {
        let location = value.ok_or_else(|| invalid("external data entry without a value"))?;
        found.locations.push(String::from_utf8(location).map_err(|_| invalid("external data location is not UTF-8"))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf bytes of field `number` holding `payload` (length-delimited).
    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |mut v: u64| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        put((number << 3) | 2);
        put(payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    /// A TensorProto named `name` whose data lies in `location` (or inline when None).
    fn tensor(name: &str, location: Option<&str>) -> Vec<u8> {
        let mut t = field(8, name.as_bytes());
        match location {
            Some(loc) => {
                t.extend(field(13, &[field(1, b"location"), field(2, loc.as_bytes())].concat()));
                t.extend(field(13, &[field(1, b"offset"), field(2, b"0")].concat()));
                t.extend([0x70, 1]); // data_location = EXTERNAL (field 14, varint)
            }
            None => t.extend(field(9, &[7u8; 300])), // raw_data
        }
        t
    }

    /// A ModelProto with the given initializers, and one node whose attribute holds a subgraph
    /// with the tensor `nested`.
    fn model(initializers: &[Vec<u8>], nested: Vec<u8>) -> Vec<u8> {
        let subgraph = field(5, &nested);
        let node = field(5, &[field(1, b"then_branch"), field(6, &subgraph)].concat());
        let mut graph = field(1, &node);
        for t in initializers {
            graph.extend(field(5, t));
        }
        [vec![0x08, 9], field(7, &graph)].concat() // ir_version 9, graph
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn finds_every_location_in_initializers_and_subgraphs() {
        let bytes = model(
            &[tensor("a", Some("model.onnx_data")), tensor("b", None), tensor("c", Some("model.onnx_data_1"))],
            tensor("d", Some("model.onnx_data")),
        );
        assert_eq!(external_data(write(&bytes).path()).unwrap(), ["model.onnx_data", "model.onnx_data_1"]);
        assert!(external_data(write(&model(&[tensor("a", None)], tensor("b", None))).path()).unwrap().is_empty());
    }

    #[test]
    fn locations_outside_the_folder_and_broken_files_are_refused() {
        for bad in ["../etc/passwd", "/etc/passwd", ""] {
            let bytes = model(&[tensor("a", Some(bad))], tensor("b", None));
            let err = external_data(write(&bytes).path()).unwrap_err().to_string();
            assert!(err.contains("not a file beside the graph"), "{bad}: {err}");
        }
        let bytes = model(&[tensor("a", Some("model.onnx_data"))], tensor("b", None));
        let err = external_data(write(&bytes[..bytes.len() - 3]).path()).unwrap_err().to_string();
        assert!(err.contains("not a valid ONNX file"), "{err}");
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/SmolLM2-135M-Instruct/model.onnx");
        assert!(external_data(&shared).unwrap().is_empty(), "the shared model keeps its weights inline");
    }

    #[test]
    fn the_graph_inputs_and_their_types_are_read_without_loading_it() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/SmolLM2-135M-Instruct/model.onnx");
        let inputs = graph_inputs(&shared).unwrap();
        // The decoder contract of ../shared/models/README.md: ids, mask, positions, 30 layers' past.
        assert_eq!(inputs.len(), 3 + 2 * 30);
        assert_eq!(inputs[0], GraphInput { name: "input_ids".into(), elem_type: Some(7) });
        let past: Vec<&GraphInput> = inputs.iter().filter(|i| i.name.starts_with("past_key_values.")).collect();
        assert_eq!(past.len(), 60);
        assert!(past.iter().all(|i| i.elem_type == Some(FLOAT32)));
        assert!(inputs.iter().any(|i| i.name == "past_key_values.29.value"));
        // A subgraph's inputs are not the model's.
        let sub_input = field(11, &[field(1, b"cond"), field(2, &field(1, &[0x08, 10]))].concat());
        let node = field(5, &[field(1, b"then_branch"), field(6, &sub_input)].concat());
        let top_input = field(11, &[field(1, b"past_key_values.0.key"), field(2, &field(1, &[0x08, 10]))].concat());
        let bytes = [vec![0x08, 9], field(7, &[field(1, &node), top_input].concat())].concat();
        let inputs = graph_inputs(write(&bytes).path()).unwrap();
        assert_eq!(inputs, [GraphInput { name: "past_key_values.0.key".into(), elem_type: Some(10) }]);
    }

    #[test]
    fn the_imported_operator_domains_are_read() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/SmolLM2-135M-Instruct/model.onnx");
        assert!(!opset_domains(&shared).unwrap().iter().any(|d| d == "ai.steadytext"));
        let opset = |domain: &[u8]| field(8, &[field(1, domain), vec![0x10, 1]].concat());
        let bytes = [vec![0x08, 9], field(7, &field(1, b"")), opset(b""), opset(b"ai.steadytext")].concat();
        assert_eq!(opset_domains(write(&bytes).path()).unwrap(), ["", "ai.steadytext"]);
    }
}
