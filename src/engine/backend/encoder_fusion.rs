//! Load-time fusion of an encoder export's self-attention. A BERT-like export from PyTorch spells
//! each layer's attention as ~25 plain nodes (three projections, the head split and its shape
//! arithmetic, scaled scores, the masked softmax and its NaN guard, the context, the head merge);
//! here each becomes one `com.microsoft.Attention` node over the same weights (Q, K and V in one
//! product), which ONNX Runtime runs 5-19% faster on a one-text embed of the shared MiniLM.
//!
//! The fused graph's numbers are not the export's bits (another summation order: ~2e-6 on
//! MiniLM's hidden states), so the loader keeps a fused session only after it agreed with the
//! export's on a probe batch (`OnnxEncoder::agrees_with`), and the engine fingerprint names the
//! fusion ([`VERSION`]). A graph that does not have the expected shape is left as it is.
//!
//! The ONNX protobuf is read and written field by field: every field this code does not change
//! is copied byte for byte, so nothing of the export is lost. Tensors the export keeps in other
//! files are written inside the rewrite, so that an export gives the same vectors in either layout.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

/// Named in the engine fingerprint: a change to what the fusion writes changes answers' bits.
pub const VERSION: &str = "encoder-attention-fusion-1";

/// One protobuf field's value (wire types 0, 1, 2 and 5; groups are refused).
#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(&'a [u8]),
}

/// One field of a message, with its bytes as written (tag included).
#[derive(Clone, Copy)]
struct Field<'a> {
    number: u64,
    value: Value<'a>,
    raw: &'a [u8],
}

impl<'a> Field<'a> {
    fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    /// The integers of a repeated integer field, packed or one per field.
    fn varints(&self) -> Option<Vec<u64>> {
        match self.value {
            Value::Varint(v) => Some(vec![v]),
            Value::Bytes(b) => {
                let (mut pos, mut out) = (0, Vec::new());
                while pos < b.len() {
                    out.push(varint(b, &mut pos)?);
                }
                Some(out)
            }
            Value::Fixed(_) => None,
        }
    }
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of a message; `None` when it is malformed.
fn fields(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let (mut pos, mut out) = (0, Vec::new());
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let width = |pos: &mut usize, n: usize| {
            let s = buf.get(*pos..pos.checked_add(n)?)?;
            *pos += n;
            Some(s)
        };
        let value = match tag & 7 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            1 => Value::Fixed(width(&mut pos, 8)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                Value::Bytes(width(&mut pos, len)?)
            }
            5 => Value::Fixed(width(&mut pos, 4)?),
            _ => return None,
        };
        out.push(Field { number: tag >> 3, value, raw: &buf[start..pos] });
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, data: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn put_int(out: &mut Vec<u8>, number: u64, v: u64) {
    put_varint(out, number << 3);
    put_varint(out, v);
}

// Field numbers and enum values of onnx.proto3 (ONNX 1.x; stable since IR version 3).
const MODEL_GRAPH: u64 = 7;
const MODEL_OPSET_IMPORT: u64 = 8;
const OPSET_DOMAIN: u64 = 1;
const OPSET_VERSION: u64 = 2;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const GRAPH_VALUE_INFO: u64 = 13;
const VALUE_INFO_NAME: u64 = 1;
const NODE_INPUT: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_NAME: u64 = 3;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
const NODE_DOMAIN: u64 = 7;
const ATTRIBUTE_NAME: u64 = 1;
const ATTRIBUTE_F: u64 = 2;
const ATTRIBUTE_I: u64 = 3;
const ATTRIBUTE_T: u64 = 5;
const ATTRIBUTE_G: u64 = 6;
const ATTRIBUTE_INTS: u64 = 8;
const ATTRIBUTE_GRAPHS: u64 = 11;
const ATTRIBUTE_TYPE: u64 = 20;
const ATTRIBUTE_TYPE_FLOAT: u64 = 1;
const ATTRIBUTE_TYPE_INT: u64 = 2;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_FLOAT_DATA: u64 = 4;
const TENSOR_INT64_DATA: u64 = 7;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
const FLOAT: u64 = 1;
const INT32: u64 = 6;
const INT64: u64 = 7;

fn le_f32(four: &[u8]) -> f32 {
    f32::from_le_bytes(four.try_into().expect("chunks_exact(4) gives 4 bytes"))
}

fn le_i64(eight: &[u8]) -> i64 {
    i64::from_le_bytes(eight.try_into().expect("chunks_exact(8) gives 8 bytes"))
}

/// A constant tensor's shape and values (float32 or int64 ones; others are not read).
struct Tensor {
    dims: Vec<i64>,
    floats: Vec<f32>,
    ints: Vec<i64>,
}

impl Tensor {
    fn parse(raw: &[u8]) -> Option<Tensor> {
        let (mut dims, mut data_type, mut raw_data, mut floats, mut ints) =
            (Vec::new(), 0, None, Vec::new(), Vec::new());
        for f in fields(raw)? {
            match f.number {
                TENSOR_DIMS => dims.extend(f.varints()?.into_iter().map(|d| d as i64)),
                TENSOR_DATA_TYPE => data_type = f.varints()?.first().copied()?,
                TENSOR_FLOAT_DATA => match f.value {
                    Value::Fixed(b) => floats.push(f32::from_le_bytes(b.try_into().ok()?)),
                    Value::Bytes(b) => floats.extend(b.chunks_exact(4).map(le_f32)),
                    Value::Varint(_) => return None,
                },
                TENSOR_INT64_DATA => ints.extend(f.varints()?.into_iter().map(|v| v as i64)),
                TENSOR_RAW_DATA => raw_data = Some(f.bytes()?),
                // Stored outside the file (`inline_external` has brought such tensors in).
                TENSOR_DATA_LOCATION if f.varints()? != [0] => return None,
                _ => {}
            }
        }
        if let Some(b) = raw_data {
            match data_type {
                FLOAT => floats = b.chunks_exact(4).map(le_f32).collect(),
                INT64 => ints = b.chunks_exact(8).map(le_i64).collect(),
                _ => return None,
            }
        }
        let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
        let have = match data_type {
            FLOAT => floats.len(),
            INT64 => ints.len(),
            _ => return None,
        };
        (have == count).then_some(Tensor { dims, floats, ints })
    }

    /// The value of a float tensor of one element.
    fn scalar(&self) -> Option<f32> {
        (self.floats.len() == 1).then(|| self.floats[0])
    }
}

/// A node: its names, and its bytes as written.
struct Node<'a> {
    raw: &'a [u8],
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
    op: &'a str,
    domain: &'a str,
    attributes: Vec<&'a [u8]>,
}

impl<'a> Node<'a> {
    fn parse(raw: &'a [u8]) -> Option<Node<'a>> {
        let mut node =
            Node { raw, inputs: Vec::new(), outputs: Vec::new(), op: "", domain: "", attributes: Vec::new() };
        for f in fields(raw)? {
            match f.number {
                NODE_INPUT => node.inputs.push(f.str()?),
                NODE_OUTPUT => node.outputs.push(f.str()?),
                NODE_OP_TYPE => node.op = f.str()?,
                NODE_DOMAIN => node.domain = f.str()?,
                NODE_ATTRIBUTE => node.attributes.push(f.bytes()?),
                _ => {}
            }
        }
        Some(node)
    }

    /// The fields of the attribute `name`.
    fn attribute(&self, name: &str) -> Option<Vec<Field<'a>>> {
        self.attributes
            .iter()
            .filter_map(|a| fields(a))
            .find(|fs| fs.iter().any(|f| f.number == ATTRIBUTE_NAME && f.str() == Some(name)))
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let mut out = Vec::new();
        for f in self.attribute(name)?.iter().filter(|f| f.number == ATTRIBUTE_INTS) {
            out.extend(f.varints()?.into_iter().map(|v| v as i64));
        }
        Some(out)
    }

    fn is(&self, op: &str) -> bool {
        self.op == op && (self.domain.is_empty() || self.domain == "ai.onnx")
    }
}

/// The graph's nodes with lookups by tensor name.
struct Graph<'a> {
    nodes: Vec<Node<'a>>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a [u8]>,
}

impl<'a> Graph<'a> {
    fn node(&self, tensor: &str, op: &str) -> Option<&Node<'a>> {
        let node = &self.nodes[*self.producer.get(tensor)?];
        node.is(op).then_some(node)
    }

    fn constant(&self, tensor: &str) -> Option<Tensor> {
        if let Some(raw) = self.initializers.get(tensor) {
            return Tensor::parse(raw);
        }
        let node = self.node(tensor, "Constant")?;
        let value = node.attribute("value")?;
        Tensor::parse(value.iter().find(|f| f.number == ATTRIBUTE_T)?.bytes()?)
    }

    fn consumers(&self, tensor: &str) -> impl Iterator<Item = &Node<'a>> {
        self.consumers.get(tensor).into_iter().flatten().map(|&i| &self.nodes[i])
    }

    /// `x` of `Mul(x, c)` (either order) with `c` a constant float of one element, and `c`.
    fn scaled(&self, tensor: &str) -> Option<(&'a str, f32)> {
        let mul = self.node(tensor, "Mul")?;
        let (a, b) = (mul.inputs.first()?, mul.inputs.get(1)?);
        match (self.constant(a).and_then(|t| t.scalar()), self.constant(b).and_then(|t| t.scalar())) {
            (None, Some(c)) => Some((a, c)),
            (Some(c), None) => Some((b, c)),
            _ => None,
        }
    }

    /// Heads and head size of a Reshape to [batch, seq, heads, size] (one may be -1): its target a
    /// constant, or a Concat whose last two parts are.
    fn head_split(&self, shape: &str) -> Option<(i64, i64)> {
        if let Some(t) = self.constant(shape) {
            return (t.ints.len() == 4).then(|| (t.ints[2], t.ints[3]));
        }
        let concat = self.node(shape, "Concat")?;
        let part = |i: usize| {
            let t = self.constant(concat.inputs.get(i)?)?;
            (t.ints.len() == 1).then(|| t.ints[0])
        };
        (concat.inputs.len() == 4).then_some(())?;
        Some((part(2)?, part(3)?))
    }

    /// `Transpose(Reshape(Add(bias, MatMul(x, weight))), perm)` into its parts.
    fn projection(&self, tensor: &str, perm: [i64; 4]) -> Option<Projection<'a>> {
        let transpose = self.node(tensor, "Transpose")?;
        (transpose.ints("perm")? == perm).then_some(())?;
        let reshape = self.node(transpose.inputs.first()?, "Reshape")?;
        let (heads, size) = self.head_split(reshape.inputs.get(1)?)?;
        let add = self.node(reshape.inputs.first()?, "Add")?;
        let (bias, product) = match (self.constant(add.inputs.first()?), self.constant(add.inputs.get(1)?)) {
            (Some(b), None) => (b, add.inputs[1]),
            (None, Some(b)) => (b, add.inputs[0]),
            _ => return None,
        };
        let matmul = self.node(product, "MatMul")?;
        let weight = self.constant(matmul.inputs.get(1)?)?;
        (weight.dims.len() == 2 && !weight.floats.is_empty()).then_some(())?;
        let n = weight.dims[1];
        // One of the two may be -1 (the export's "the rest").
        let (heads, size) = match (heads, size) {
            (-1, s) if s > 0 && n % s == 0 => (n / s, s),
            (h, -1) if h > 0 && n % h == 0 => (h, n / h),
            (h, s) => (h, s),
        };
        (heads > 0 && heads.checked_mul(size)? == n && bias.dims == [n]).then_some(())?;
        Some(Projection { input: matmul.inputs[0], weight, bias, heads, size })
    }
}

struct Projection<'a> {
    input: &'a str,
    weight: Tensor,
    bias: Tensor,
    heads: i64,
    size: i64,
}

/// One attention found: what the Attention node reads and writes, and the node it replaces.
struct Layer<'a> {
    input: &'a str,
    /// [hidden, 3 x heads x size], Q's columns then K's then V's.
    weight: Vec<f32>,
    weight_dims: [i64; 2],
    bias: Vec<f32>,
    heads: i64,
    scale: f32,
    output: &'a str,
    replaces: usize,
}

/// The attention around `softmax` (index in the graph), when it has the expected shape.
fn attention<'a>(g: &Graph<'a>, softmax: usize) -> Option<Layer<'a>> {
    let sm = &g.nodes[softmax];
    if let Some(axis) = sm.attribute("axis") {
        let axis = axis.iter().find(|f| f.number == ATTRIBUTE_I)?.varints()?[0] as i64;
        (axis == -1 || axis == 3).then_some(())?;
    }
    let scores = g.node(sm.inputs.first()?, "Add")?;
    let product = scores.inputs.iter().find_map(|i| g.node(i, "MatMul"))?;
    let (q, q_scale) = g.scaled(product.inputs.first()?)?;
    let (k, k_scale) = g.scaled(product.inputs.get(1)?)?;
    let q = g.projection(q, [0, 2, 1, 3])?;
    let k = g.projection(k, [0, 2, 3, 1])?;
    // The softmax, maybe behind `Where(IsNaN(p), c, p)`, weighs the values.
    let mut probs: &'a str = sm.outputs.first()?;
    let guard = g.consumers(probs).find(|n| {
        n.is("Where")
            && n.inputs.get(2) == Some(&probs)
            && n.inputs
                .first()
                .and_then(|c| g.node(c, "IsNaN"))
                .is_some_and(|isnan| isnan.inputs.first() == Some(&probs))
    });
    if let Some(guard) = guard {
        probs = guard.outputs.first()?;
    }
    let mut weighing = g.consumers(probs).filter(|n| n.is("MatMul") && n.inputs.first() == Some(&probs));
    let context = weighing.next()?;
    weighing.next().is_none().then_some(())?;
    let v = g.projection(context.inputs.get(1)?, [0, 2, 1, 3])?;
    let geometry = (q.heads, q.size, &q.weight.dims);
    if q.input != k.input
        || q.input != v.input
        || (k.heads, k.size, &k.weight.dims) != geometry
        || (v.heads, v.size, &v.weight.dims) != geometry
    {
        return None;
    }
    // The heads merged back: Reshape and Transpose nodes (shape reads aside) up to the last Reshape.
    let (mut tensor, mut last, mut merged) = (*context.outputs.first()?, None, false);
    loop {
        let mut next = g.consumers(tensor).filter(|n| !n.is("Shape"));
        let (Some(n), None) = (next.next(), next.next()) else { break };
        if n.inputs.first() != Some(&tensor) || !(n.is("Reshape") || n.is("Transpose")) {
            break;
        }
        if n.is("Transpose") {
            (n.ints("perm")? == [0, 2, 1, 3]).then_some(())?;
            merged = true;
        }
        last = Some(n);
        tensor = n.outputs.first()?;
    }
    let last = last.filter(|n| merged && n.is("Reshape"))?;
    let hidden = q.weight.dims[0] as usize;
    let n = (q.heads * q.size) as usize;
    let mut weight = Vec::with_capacity(hidden * 3 * n);
    for row in 0..hidden {
        for p in [&q, &k, &v] {
            weight.extend_from_slice(&p.weight.floats[row * n..(row + 1) * n]);
        }
    }
    let bias = [&q, &k, &v].iter().flat_map(|p| p.bias.floats.iter().copied()).collect();
    Some(Layer {
        input: q.input,
        weight,
        weight_dims: [hidden as i64, 3 * n as i64],
        bias,
        heads: q.heads,
        scale: q_scale * k_scale,
        output: last.outputs[0],
        replaces: g.producer[last.outputs[0]],
    })
}

fn attribute_int(name: &str, v: i64) -> Vec<u8> {
    let mut a = Vec::new();
    put_bytes(&mut a, ATTRIBUTE_NAME, name.as_bytes());
    put_int(&mut a, ATTRIBUTE_I, v as u64);
    put_int(&mut a, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT);
    a
}

fn attribute_float(name: &str, v: f32) -> Vec<u8> {
    let mut a = Vec::new();
    put_bytes(&mut a, ATTRIBUTE_NAME, name.as_bytes());
    put_varint(&mut a, ATTRIBUTE_F << 3 | 5);
    a.extend_from_slice(&v.to_le_bytes());
    put_int(&mut a, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_FLOAT);
    a
}

fn node_bytes(op: &str, domain: &str, name: &str, inputs: &[&str], output: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        put_bytes(&mut n, NODE_INPUT, i.as_bytes());
    }
    put_bytes(&mut n, NODE_OUTPUT, output.as_bytes());
    put_bytes(&mut n, NODE_NAME, name.as_bytes());
    put_bytes(&mut n, NODE_OP_TYPE, op.as_bytes());
    for a in attributes {
        put_bytes(&mut n, NODE_ATTRIBUTE, a);
    }
    if !domain.is_empty() {
        put_bytes(&mut n, NODE_DOMAIN, domain.as_bytes());
    }
    n
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        put_int(&mut t, TENSOR_DIMS, d as u64);
    }
    put_int(&mut t, TENSOR_DATA_TYPE, FLOAT);
    put_bytes(&mut t, TENSOR_NAME, name.as_bytes());
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    put_bytes(&mut t, TENSOR_RAW_DATA, &data);
    t
}

/// The model `model` (an ONNX file's bytes; tensors it keeps in other files are read from `dir`,
/// the file's folder, and written inside) with every self-attention fused, and how many; `None`
/// when it has none of the expected shape or is malformed.
pub fn fuse(model: &[u8], dir: &Path) -> Option<(Vec<u8>, usize)> {
    let model_fields = fields(model)?;
    let graph_raw = inline_external(model_fields.iter().find(|f| f.number == MODEL_GRAPH)?.bytes()?, dir)?;
    let graph_fields = fields(&graph_raw)?;
    let mut g =
        Graph { nodes: Vec::new(), producer: HashMap::new(), consumers: HashMap::new(), initializers: HashMap::new() };
    let (mut inputs, mut outputs) = (HashSet::new(), Vec::new());
    for f in &graph_fields {
        match f.number {
            GRAPH_NODE => g.nodes.push(Node::parse(f.bytes()?)?),
            GRAPH_INITIALIZER => {
                g.initializers.insert(name_in(f, TENSOR_NAME)?, f.bytes()?);
            }
            GRAPH_INPUT => {
                inputs.insert(name_in(f, VALUE_INFO_NAME)?);
            }
            GRAPH_OUTPUT => outputs.push(name_in(f, VALUE_INFO_NAME)?),
            _ => {}
        }
    }
    if !inputs.contains("attention_mask") || g.nodes.iter().any(|n| n.attributes.iter().any(|a| has_subgraph(a))) {
        return None;
    }
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            g.producer.insert(o, i);
        }
        for &input in &n.inputs {
            g.consumers.entry(input).or_default().push(i);
        }
    }
    let softmaxes: Vec<usize> = (0..g.nodes.len()).filter(|&i| g.nodes[i].is("Softmax")).collect();
    let layers: Vec<Layer> = softmaxes.iter().map(|&i| attention(&g, i)).collect::<Option<_>>()?;
    if layers.is_empty() {
        return None;
    }
    Some((write(&model_fields, &graph_fields, &g, &layers, &outputs), layers.len()))
}

/// `graph` (a GraphProto) with every initializer kept in another file read from `dir` and written
/// inside it: the rewrite is loaded from memory, where those files' paths would not resolve.
fn inline_external<'g>(graph: &'g [u8], dir: &Path) -> Option<Cow<'g, [u8]>> {
    let external = |f: &Field| {
        f.number == GRAPH_INITIALIZER
            && f.bytes().and_then(fields).is_some_and(|t| {
                t.iter().any(|t| t.number == TENSOR_DATA_LOCATION && t.varints().is_some_and(|v| v != [0]))
            })
    };
    let graph_fields = fields(graph)?;
    if !graph_fields.iter().any(external) {
        return Some(Cow::Borrowed(graph));
    }
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(graph.len());
    for f in &graph_fields {
        if !external(f) {
            out.extend_from_slice(f.raw);
            continue;
        }
        let tensor = fields(f.bytes()?)?;
        let (mut location, mut offset, mut length) = (None, 0usize, None);
        for entry in tensor.iter().filter(|t| t.number == TENSOR_EXTERNAL_DATA) {
            let entry = fields(entry.bytes()?)?;
            let key = entry.iter().find(|e| e.number == ENTRY_KEY)?.str()?;
            let value = entry.iter().find(|e| e.number == ENTRY_VALUE)?.str()?;
            match key {
                "location" => location = Some(value),
                "offset" => offset = value.parse().ok()?,
                "length" => length = Some(value.parse::<usize>().ok()?),
                _ => {}
            }
        }
        let location = location?;
        if !Path::new(location).components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        if !files.contains_key(location) {
            files.insert(location.to_string(), std::fs::read(dir.join(location)).ok()?);
        }
        let data = &files[location];
        let end = match length {
            Some(n) => offset.checked_add(n)?,
            None => data.len(),
        };
        let mut inlined = Vec::new();
        for t in tensor.iter().filter(|t| !matches!(t.number, TENSOR_DATA_LOCATION | TENSOR_EXTERNAL_DATA)) {
            inlined.extend_from_slice(t.raw);
        }
        put_bytes(&mut inlined, TENSOR_RAW_DATA, data.get(offset..end)?);
        put_bytes(&mut out, GRAPH_INITIALIZER, &inlined);
    }
    Some(Cow::Owned(out))
}

/// The string field `number` (a tensor's or a value's name) of the message in field `f`.
fn name_in<'a>(f: &Field<'a>, number: u64) -> Option<&'a str> {
    fields(f.bytes()?)?.iter().find(|t| t.number == number)?.str()
}

/// Whether an attribute holds a graph (If, Loop, Scan bodies): such graphs are left alone.
fn has_subgraph(attribute: &[u8]) -> bool {
    fields(attribute).is_none_or(|fs| fs.iter().any(|f| matches!(f.number, ATTRIBUTE_G | ATTRIBUTE_GRAPHS)))
}

/// The model's bytes with the graph's attention replaced; unused nodes and initializers dropped.
fn write(model_fields: &[Field], graph_fields: &[Field], g: &Graph, layers: &[Layer], outputs: &[&str]) -> Vec<u8> {
    const MASK: &str = "steadytext/attention_mask_int32";
    let cast = node_bytes(
        "Cast",
        "",
        "steadytext/attention_mask_cast",
        &["attention_mask"],
        MASK,
        &[attribute_int("to", INT32 as i64)],
    );
    let mut nodes: Vec<(Vec<&str>, Vec<&str>, Vec<u8>)> = vec![(vec!["attention_mask"], vec![MASK], cast)];
    let replaced: HashMap<usize, usize> = layers.iter().enumerate().map(|(i, l)| (l.replaces, i)).collect();
    let names: Vec<[String; 3]> = (0..layers.len())
        .map(|i| {
            [
                format!("steadytext/attention_{i}"),
                format!("steadytext/attention_{i}/qkv_weight"),
                format!("steadytext/attention_{i}/qkv_bias"),
            ]
        })
        .collect();
    for (i, n) in g.nodes.iter().enumerate() {
        match replaced.get(&i) {
            Some(&l) => {
                let (layer, [name, w, b]) = (&layers[l], &names[l]);
                let attributes = [attribute_int("num_heads", layer.heads), attribute_float("scale", layer.scale)];
                let inputs = vec![layer.input, w.as_str(), b.as_str(), MASK];
                let bytes = node_bytes("Attention", "com.microsoft", name, &inputs, layer.output, &attributes);
                nodes.push((inputs, vec![layer.output], bytes));
            }
            None => nodes.push((n.inputs.clone(), n.outputs.clone(), n.raw.to_vec())),
        }
    }
    // Keep what the outputs need (nodes are in order: each after what it reads).
    let mut needed: HashSet<&str> = outputs.iter().copied().collect();
    let mut live = vec![false; nodes.len()];
    for (i, (inputs, outs, _)) in nodes.iter().enumerate().rev() {
        if outs.iter().any(|o| needed.contains(o)) {
            live[i] = true;
            needed.extend(inputs.iter().copied().filter(|s| !s.is_empty()));
        }
    }
    let mut graph = Vec::new();
    let mut nodes_written = false;
    for f in graph_fields {
        match f.number {
            GRAPH_NODE if !nodes_written => {
                for ((_, _, bytes), _) in nodes.iter().zip(&live).filter(|(_, &l)| l) {
                    put_bytes(&mut graph, GRAPH_NODE, bytes);
                }
                nodes_written = true;
            }
            GRAPH_NODE => {}
            GRAPH_INITIALIZER | GRAPH_VALUE_INFO => {
                let number = if f.number == GRAPH_INITIALIZER { TENSOR_NAME } else { VALUE_INFO_NAME };
                if name_in(f, number).is_some_and(|n| needed.contains(n)) {
                    graph.extend_from_slice(f.raw);
                }
            }
            _ => graph.extend_from_slice(f.raw),
        }
    }
    for (layer, [_, w, b]) in layers.iter().zip(&names) {
        put_bytes(&mut graph, GRAPH_INITIALIZER, &float_tensor(w, &layer.weight_dims, &layer.weight));
        put_bytes(&mut graph, GRAPH_INITIALIZER, &float_tensor(b, &[layer.bias.len() as i64], &layer.bias));
    }
    let mut out = Vec::with_capacity(graph.len() + 1024);
    let mut has_domain = false;
    for f in model_fields {
        match f.number {
            MODEL_GRAPH => put_bytes(&mut out, MODEL_GRAPH, &graph),
            MODEL_OPSET_IMPORT => {
                has_domain |= f
                    .bytes()
                    .and_then(fields)
                    .is_some_and(|fs| fs.iter().any(|o| o.number == OPSET_DOMAIN && o.str() == Some("com.microsoft")));
                out.extend_from_slice(f.raw);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    if !has_domain {
        let mut opset = Vec::new();
        put_bytes(&mut opset, OPSET_DOMAIN, b"com.microsoft");
        put_int(&mut opset, OPSET_VERSION, 1);
        put_bytes(&mut out, MODEL_OPSET_IMPORT, &opset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_minilm() -> Vec<u8> {
        std::fs::read(super::super::session::shared_minilm_path()).unwrap()
    }

    #[test]
    fn fields_are_read_and_written_back_byte_for_byte() {
        let model = shared_minilm();
        let copy: Vec<u8> = fields(&model).unwrap().iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(copy, model);
        let mut again = Vec::new();
        for f in fields(&model).unwrap() {
            match f.value {
                Value::Bytes(b) => put_bytes(&mut again, f.number, b),
                Value::Varint(v) => put_int(&mut again, f.number, v),
                Value::Fixed(_) => again.extend_from_slice(f.raw),
            }
        }
        assert_eq!(again, model, "the encoder writes what the reader read");
    }

    #[test]
    fn the_shared_encoders_six_attentions_are_fused_and_the_rest_kept() {
        let model = shared_minilm();
        let (fused, layers) = fuse(&model, Path::new(".")).unwrap();
        assert_eq!(layers, 6);
        let graph = fields(&fused).unwrap().into_iter().find(|f| f.number == MODEL_GRAPH).unwrap();
        let nodes: Vec<Node> = fields(graph.bytes().unwrap())
            .unwrap()
            .into_iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| Node::parse(f.bytes().unwrap()).unwrap())
            .collect();
        let count = |op: &str| nodes.iter().filter(|n| n.op == op).count();
        assert_eq!((count("Attention"), count("Softmax"), count("IsNaN"), count("Transpose")), (6, 0, 0, 0));
        assert_eq!(count("LayerNormalization"), 13, "embeddings' and each layer's two norms stay");
        // Q, K and V of a layer in one product: 6 x (1 + output + two feed-forward) MatMuls.
        assert_eq!(count("MatMul"), 18);
        assert!(fused.len() < model.len() + model.len() / 20, "the separate Q, K and V weights are gone");
    }

    #[test]
    fn malformed_or_foreign_graphs_are_left_alone() {
        assert!(fuse(b"", Path::new(".")).is_none());
        assert!(fuse(&[0x0a, 0xff], Path::new(".")).is_none(), "a length past the end");
        let model = shared_minilm();
        assert!(fuse(&model[..model.len() / 2], Path::new(".")).is_none(), "a cut file");
        // A model without a graph.
        let mut no_graph = Vec::new();
        put_int(&mut no_graph, 1, 8);
        assert!(fuse(&no_graph, Path::new(".")).is_none());
    }
}
