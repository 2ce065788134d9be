"""Writes the fused form of a BERT-like encoder export (the shared all-MiniLM-L6-v2): the same
weights, each layer's self-attention one `com.microsoft.Attention` node (one product for Q, K and V,
scaled scores, masked softmax and the context in one kernel) instead of ~25 plain nodes, and the
shape arithmetic of the export (Shape/Gather/Unsqueeze/Concat feeding each Reshape) replaced by
constant shapes. It is the graph steadytext makes of the export as it loads it
(src/engine/backend/encoder_fusion.rs), written here by another implementation (Python's `onnx`):
tests/reference.rs checks that both give the same bits, and bench/run.sh runs Python onnxruntime
on it beside the daemon.

Its numbers are not the export's bits: the check below holds every hidden state within
TOLERANCE of the export's and every pooled vector at cosine >= COSINE to it, and requires what
steadytext promises of any encoder (a row of a padded batch bit-identical to the text alone, the
same bits with 1 and 2 threads). A graph that does not have the expected shape is refused, naming
what differs, rather than guessed at.

usage: build.py SHARED_MODEL_DIR OUT_DIR  (writes OUT_DIR/<name>-fused/)
"""

import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

# The largest difference of a hidden-state value from the export's: fp32 rounding of a
# different summation order (measured on the shared MiniLM: ~5e-6), with margin.
TOLERANCE = 1e-4
# The pooled vectors' agreement with the export's; the same bound as README's contract with
# sentence-transformers (../shared/models/README.md).
COSINE = 0.9999999


def fail(message):
    sys.exit(f"fused-encoder: {message}")


class Graph:
    """The export's graph with lookups by tensor name."""

    def __init__(self, model):
        self.model, self.g = model, model.graph
        self.init = {i.name: i for i in self.g.initializer}
        self.refresh()

    def refresh(self):
        self.producer = {o: n for n in self.g.node for o in n.output}

    def const(self, name):
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
        return None

    def node(self, name, op):
        """The node producing `name`, which must be an `op`."""
        n = self.producer.get(name)
        if n is None or n.op_type != op:
            fail(f"expected {name} to come from a {op} node, found {n.op_type if n else 'a graph input'}")
        return n


def runtime_shapes(path, names, batch, seq):
    """The shapes of the tensors `names` when the graph at `path` runs on `batch` x `seq` tokens."""
    model = onnx.load(path)
    for i, name in enumerate(names):
        shape_out = f"probe_shape_{i}"
        model.graph.node.append(helper.make_node("Shape", [name], [shape_out]))
        model.graph.output.append(helper.make_tensor_value_info(shape_out, onnx.TensorProto.INT64, [None]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.full((batch, seq), 1000, np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    outs = sess.run([f"probe_shape_{i}" for i in range(len(names))], feeds)
    return {name: tuple(int(d) for d in out) for name, out in zip(names, outs)}


def constant_reshapes(graph, path):
    """Each Reshape whose target shape is computed at run time gets a constant one (0 copies the
    input's dimension, -1 the rest), read from two runs of other sizes; exact: a Reshape moves no
    number. A Reshape no constant can express (two dimensions that vary) keeps its computation."""
    reshapes = [n for n in graph.g.node if n.op_type == "Reshape" and graph.const(n.input[1]) is None]
    names = sorted({t for n in reshapes for t in (n.input[0], n.output[0])})
    a, b = runtime_shapes(path, names, 1, 7), runtime_shapes(path, names, 3, 11)
    for n in reshapes:
        (ia, oa), (ib, ob) = (a[n.input[0]], a[n.output[0]]), (b[n.input[0]], b[n.output[0]])
        spec = []
        for i, (x, y) in enumerate(zip(oa, ob)):
            if i < len(ia) and ia[i] == x and ib[i] == y:
                spec.append(0)
            elif x == y:
                spec.append(x)
            else:
                spec.append(-1)
        if spec.count(-1) > 1:
            continue
        name = n.output[0] + "/constant_shape"
        graph.g.initializer.append(numpy_helper.from_array(np.array(spec, np.int64), name))
        graph.init[name] = graph.g.initializer[-1]
        n.input[1] = name


def drop_nan_guards(graph):
    """`Where(IsNaN(p), c, p)` after a softmax passes p through: a softmax row is NaN only when
    every key is masked, and an encoder row always has its first token."""
    rename = {}
    for n in graph.g.node:
        if n.op_type == "Where":
            guard = graph.producer.get(n.input[0])
            source = graph.producer.get(n.input[2])
            if (guard is not None and guard.op_type == "IsNaN" and guard.input[0] == n.input[2]
                    and source is not None and source.op_type == "Softmax"):
                rename[n.output[0]] = n.input[2]
    for n in graph.g.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]


def projection(graph, name, perm):
    """(x, weight, bias, heads, head size) of `Transpose(Reshape(Add(bias, MatMul(x, weight))))`."""
    t = graph.node(name, "Transpose")
    if list(helper.get_attribute_value(t.attribute[0])) != perm:
        fail(f"{t.name}: perm {helper.get_attribute_value(t.attribute[0])}, expected {perm}")
    r = graph.node(t.input[0], "Reshape")
    shape = graph.const(r.input[1])
    if shape is None or len(shape) != 4 or shape[0] != 0 or shape[1] != 0:
        fail(f"{r.name}: target shape {shape}, expected [0, 0, heads, head size]")
    add = graph.node(r.input[0], "Add")
    which = [graph.const(i) is not None for i in add.input]
    if which.count(True) != 1:
        fail(f"{add.name}: expected one constant bias")
    bias = graph.const(add.input[which.index(True)])
    mm = graph.node(add.input[which.index(False)], "MatMul")
    weight = graph.const(mm.input[1])
    if weight is None or weight.ndim != 2:
        fail(f"{mm.name}: expected a constant 2-D weight")
    return mm.input[0], weight, bias, int(shape[2]), int(shape[3])


def fuse_attention(graph, mask):
    """Every softmax's attention around it becomes one Attention node; returns how many."""
    fused = 0
    consumers = {}
    for n in graph.g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for softmax in [n for n in graph.g.node if n.op_type == "Softmax"]:
        scores = graph.node(softmax.input[0], "Add")
        mm = next((graph.producer.get(i) for i in scores.input
                   if graph.producer.get(i) is not None and graph.producer[i].op_type == "MatMul"), None)
        if mm is None:
            fail(f"{scores.name}: expected a MatMul of queries and keys")
        q_scaled, k_scaled = graph.node(mm.input[0], "Mul"), graph.node(mm.input[1], "Mul")
        q_scale, k_scale = graph.const(q_scaled.input[1]), graph.const(k_scaled.input[1])
        if q_scale is None or k_scale is None or q_scale.size != 1 or k_scale.size != 1:
            fail(f"{mm.name}: expected queries and keys each scaled by a constant")
        xq, wq, bq, heads, size = projection(graph, q_scaled.input[0], [0, 2, 1, 3])
        xk, wk, bk, *kgeom = projection(graph, k_scaled.input[0], [0, 2, 3, 1])
        context = [c for c in consumers.get(softmax.output[0], []) if c.op_type == "MatMul"]
        if len(context) != 1:
            fail(f"{softmax.name}: expected one MatMul of the weights and the values")
        xv, wv, bv, *vgeom = projection(graph, context[0].input[1], [0, 2, 1, 3])
        if not (xq == xk == xv) or kgeom != [heads, size] or vgeom != [heads, size]:
            fail(f"{softmax.name}: queries, keys and values do not come from one input with one geometry")
        ctx = context[0].output[0]
        # The export may reshape the context to its own shape first ([0, 0, 0, 0]: a no-op).
        same = [c for c in consumers.get(ctx, []) if c.op_type == "Reshape"]
        if len(same) == 1 and np.array_equal(graph.const(same[0].input[1]), [0, 0, 0, 0]):
            ctx = same[0].output[0]
        t = [c for c in consumers.get(ctx, []) if c.op_type == "Transpose"]
        if len(t) != 1 or list(helper.get_attribute_value(t[0].attribute[0])) != [0, 2, 1, 3]:
            fail(f"{context[0].name}: expected the context transposed back to [batch, seq, heads, size]")
        out = [c for c in consumers.get(t[0].output[0], []) if c.op_type == "Reshape"]
        if len(out) != 1 or list(graph.const(out[0].input[1])) != [0, 0, heads * size]:
            fail(f"{t[0].name}: expected a Reshape to [0, 0, {heads * size}]")
        layer = f"attention_{fused}"
        w = np.concatenate([wq, wk, wv], axis=1).astype(np.float32)
        b = np.concatenate([bq, bk, bv]).astype(np.float32)
        graph.g.initializer.extend([numpy_helper.from_array(w, f"{layer}/qkv_weight"),
                                    numpy_helper.from_array(b, f"{layer}/qkv_bias")])
        scale = float(np.float32(q_scale.reshape(())) * np.float32(k_scale.reshape(())))
        graph.g.node.append(helper.make_node(
            "Attention", [xq, f"{layer}/qkv_weight", f"{layer}/qkv_bias", mask], [out[0].output[0]],
            name=layer, domain="com.microsoft", num_heads=heads, scale=scale))
        out[0].output[0] = f"{layer}/replaced"
        fused += 1
    return fused


def prune_and_sort(g):
    """The nodes the outputs need, in an order where each comes after what it reads."""
    available = {i.name for i in g.input} | {i.name for i in g.initializer}
    order, pending = [], list(g.node)
    while pending:
        rest = [n for n in pending if not all(not i or i in available for i in n.input)]
        for n in pending:
            if n not in rest:
                order.append(n)
                available.update(n.output)
        if len(rest) == len(pending):
            fail(f"{rest[0].name} reads a tensor no node writes")
        pending = rest
    needed, live = {o.name for o in g.output}, []
    for n in reversed(order):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(live))
    kept = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(kept)


def fuse(path):
    model = onnx.load(path)
    graph = Graph(model)
    inputs = {i.name for i in model.graph.input}
    if "attention_mask" not in inputs:
        fail("the graph has no attention_mask input")
    constant_reshapes(graph, path)
    graph.refresh()
    drop_nan_guards(graph)
    graph.refresh()
    mask = "attention_mask/int32"
    model.graph.node.append(helper.make_node("Cast", ["attention_mask"], [mask], to=onnx.TensorProto.INT32))
    count = fuse_attention(graph, mask)
    if count == 0:
        fail("no attention found")
    prune_and_sort(model.graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.producer_name, model.producer_version = "steadytext tools/fused-encoder", "1"
    return model, count


def session(model_bytes_or_path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def feeds(sess, ids, mask):
    ids, mask = np.array(ids, np.int64), np.array(mask, np.int64)
    all_feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {i.name: all_feeds[i.name] for i in sess.get_inputs()}


def check(shared_path, fused_bytes, rows):
    """The fused graph against the export on `rows` (token id lists): alone and as one padded
    batch, 1 and 2 threads."""
    export, one, two = session(shared_path, 2), session(fused_bytes, 1), session(fused_bytes, 2)
    width = max(len(r) for r in rows)
    ids = [r + [0] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    batch = two.run(None, feeds(two, ids, mask))[0]
    if not np.array_equal(batch, one.run(None, feeds(one, ids, mask))[0]):
        fail("1 and 2 threads give different bits")
    worst_diff, worst_cos = 0.0, 1.0
    for i, r in enumerate(rows):
        alone = two.run(None, feeds(two, [r], [[1] * len(r)]))[0][0]
        if not np.array_equal(alone, batch[i, :len(r)]):
            fail(f"row {i} of a padded batch differs from the same text alone")
        expected = export.run(None, feeds(export, [r], [[1] * len(r)]))[0][0]
        worst_diff = max(worst_diff, float(np.max(np.abs(alone - expected))))
        a, e = alone.mean(0), expected.mean(0)
        worst_cos = min(worst_cos, float(a @ e / np.linalg.norm(a) / np.linalg.norm(e)))
    if worst_diff > TOLERANCE or worst_cos < COSINE:
        fail(f"hidden states differ from the export's by up to {worst_diff:.2e} (bound {TOLERANCE}), "
             f"pooled cosine {worst_cos:.9f} (bound {COSINE})")
    return worst_diff, worst_cos


def main():
    shared_dir, out_dir = sys.argv[1], sys.argv[2]
    from tokenizers import Tokenizer  # noqa: E402 (only the check needs it)

    shared_path = os.path.join(shared_dir, "model.onnx")
    model, layers = fuse(shared_path)
    fused_bytes = model.SerializeToString()
    tokenizer = Tokenizer.from_file(os.path.join(shared_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    texts = ["Hello world", "a", "The quick brown fox jumps over the lazy dog.",
             "Ünïcödé text with emoji 🚀 and CJK 漢字", "determinism " * 40, "long input " * 200]
    rows = [tokenizer.encode(t).ids for t in texts]
    worst_diff, worst_cos = check(shared_path, fused_bytes, rows)
    name = os.path.basename(os.path.normpath(shared_dir)) + "-fused"
    folder, tmp = os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shared_dir, tmp, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data", "*.onnx_data"),
                    copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    with open(os.path.join(tmp, "model.onnx"), "wb") as f:
        f.write(fused_bytes)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    print(f"{folder}: {layers} attention layers fused, {len(model.graph.node)} nodes; against the export: "
          f"max |hidden diff| {worst_diff:.2e}, min pooled cosine {worst_cos:.9f}; padded rows and 1/2 threads "
          "bit-identical")


if __name__ == "__main__":
    main()
