#!/usr/bin/env python3
"""What batching decode steps can gain on this machine, measured outside the daemon: the cost of
one model call of the fused decoder for 1 to 16 rows (Python onnxruntime, IoBinding, the shared KV
buffer the daemon uses), whole decode steps at two context lengths, and its MatMulNBits nodes
alone (the int4 weights at int8 compute: the only work rows share), and its GroupQueryAttention
nodes alone. A call of n rows that costs
c times a call of one row gives at most n / c times one stream's tokens/s, before prefill,
sampling and I/O: the ceiling the daemon's concurrency figures sit under.

usage: ceiling.py FUSED_MODEL_DIR WORK_DIR JSON_OUT [THREADS]
(run by bench/run.sh in the venv of tools/fused-decoder, which has the `onnx` package)
"""

import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROWS = (1, 2, 4, 8, 16)
PASTS = (100, 250)
# Each figure is the best of this many rounds (neighbours move single rounds by 10-20% here).
ROUNDS = 3


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def best_ms(run, calls):
    """The fastest round's milliseconds per call of `run`, after a warm-up."""
    for _ in range(3):
        run()
    rounds = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(calls):
            run()
        rounds.append((time.perf_counter() - t) / calls * 1e3)
    return min(rounds)


def matmul_only_model(fused, work):
    """The fused model's MatMulNBits nodes (same weights and attributes), each fed a graph input of
    its width, into WORK_DIR once; returns the model path."""
    path = os.path.join(work, "matmulnbits.onnx")
    if os.path.exists(path):
        return path
    os.makedirs(work, exist_ok=True)
    model = onnx.load(os.path.join(fused, "model.onnx"))
    weights = {i.name: i for i in model.graph.initializer}
    nodes, used, outputs, widths = [], [], [], set()
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        widths.add(attrs["K"])
        node = helper.make_node("MatMulNBits", [f"x{attrs['K']}", *n.input[1:]], [f"{n.name}/y"],
                                domain="com.microsoft", name=n.name)
        node.attribute.extend(n.attribute)
        nodes.append(node)
        used += n.input[1:]
        outputs.append(helper.make_tensor_value_info(f"{n.name}/y", TensorProto.FLOAT, ["rows", attrs["N"]]))
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["rows", k]) for k in sorted(widths)]
    graph = helper.make_graph(nodes, "matmulnbits", inputs, outputs, [weights[u] for u in dict.fromkeys(used)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path + ".tmp",
              save_as_external_data=True, location="matmulnbits.onnx.data")
    os.replace(path + ".tmp", path)
    return path


def matmul_shapes(path):
    """[K, N] of each MatMulNBits node of the matmul-only model (benches/kernels.rs times our
    kernel on the same shapes)."""
    model = onnx.load(path, load_external_data=False)
    return [[helper.get_attribute_value(a) for k in ("K", "N") for a in n.attribute if a.name == k]
            for n in model.graph.node]


def matmul_figures(path, threads):
    sess = session(path, threads)
    widths = [(i.name, i.shape[1]) for i in sess.get_inputs()]
    rng = np.random.default_rng(1)
    out = {}
    for rows in ROWS:
        feeds = {name: rng.standard_normal((rows, k)).astype(np.float32) for name, k in widths}
        out[rows] = best_ms(lambda: sess.run(None, feeds), 30)
    return out


def step_figures(fused, threads):
    """Milliseconds per decode step of `rows` sequences, each `past` positions long."""
    decoder = json.load(open(os.path.join(fused, "genai_config.json")))["model"]["decoder"]
    layers, kv, dim = decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]
    sess = session(os.path.join(fused, "model.onnx"), threads)
    rng = np.random.default_rng(2)
    out = {}
    for past in PASTS:
        for rows in ROWS:
            # A KV buffer past the context (as the daemon's arena has), filled with small values.
            buffers = [(0.1 * rng.standard_normal((rows, kv, 512, dim))).astype(np.float32)
                       for _ in range(2 * layers)]
            binding = sess.io_binding()
            binding.bind_cpu_input("input_ids", np.arange(100, 100 + rows, dtype=np.int64)[:, None])
            binding.bind_cpu_input("attention_mask", np.ones((rows, past + 1), np.int64))
            for i in range(layers):
                for k, kind in enumerate(("key", "value")):
                    value = ort.OrtValue.ortvalue_from_numpy(buffers[2 * i + k])
                    binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                    binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
            binding.bind_output("logits")
            out[(rows, past)] = best_ms(lambda: sess.run_with_iobinding(binding), 20)
    return out


def attention_figures(fused, work, threads):
    """Milliseconds per decode step of the fused model's GroupQueryAttention alone: one node per
    layer (its attributes, rotary caches and KV shape), every layer fed the same query rows, each
    its own shared KV buffer of 512 positions; `rows` rows each `past` positions long.
    benches/kernels.rs times our operator on the same shapes."""
    model = onnx.load(os.path.join(fused, "model.onnx"))
    weights = {i.name: i for i in model.graph.initializer}
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    attrs = {a.name: helper.get_attribute_value(a) for a in gqa[0].attribute}
    cos = numpy_helper.to_array(weights[gqa[0].input[7]])
    sin = numpy_helper.to_array(weights[gqa[0].input[8]])
    heads, kv = attrs["num_heads"], attrs["kv_num_heads"]
    dim = 2 * cos.shape[1]
    width, layers, capacity = (heads + 2 * kv) * dim, len(gqa), 512
    F, I = TensorProto.FLOAT, TensorProto.INT32
    inputs = [helper.make_tensor_value_info("query", F, ["b", 1, width]),
              helper.make_tensor_value_info("seqlens_k", I, ["b"]),
              helper.make_tensor_value_info("total_sequence_length", I, [1])]
    nodes, outputs = [], []
    for layer in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past.{layer}.{kind}", F, ["b", kv, capacity, dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", F, ["b", kv, capacity, dim]))
        outputs.append(helper.make_tensor_value_info(f"out.{layer}", F, ["b", 1, heads * dim]))
        node = helper.make_node("GroupQueryAttention", ["query", "", "", f"past.{layer}.key", f"past.{layer}.value",
                                "seqlens_k", "total_sequence_length", "cos", "sin"],
                                [f"out.{layer}", f"present.{layer}.key", f"present.{layer}.value"],
                                domain="com.microsoft", name=f"attention.{layer}")
        node.attribute.extend(gqa[0].attribute)
        nodes.append(node)
    graph = helper.make_graph(nodes, "attention", inputs, outputs,
                              [numpy_helper.from_array(cos, "cos"), numpy_helper.from_array(sin, "sin")])
    path = os.path.join(work, "attention.onnx")
    os.makedirs(work, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), path)
    sess = session(path, threads)
    rng = np.random.default_rng(3)
    table = []
    for rows in ROWS:
        row = {"rows": rows}
        for past in PASTS:
            buffers = [(0.1 * rng.standard_normal((rows, kv, capacity, dim))).astype(np.float32)
                       for _ in range(2 * layers)]
            binding = sess.io_binding()
            binding.bind_cpu_input("query", rng.standard_normal((rows, 1, width)).astype(np.float32))
            binding.bind_cpu_input("seqlens_k", np.full(rows, past, np.int32))
            binding.bind_cpu_input("total_sequence_length", np.array([past + 1], np.int32))
            for layer in range(layers):
                for k, kind in enumerate(("key", "value")):
                    value = ort.OrtValue.ortvalue_from_numpy(buffers[2 * layer + k])
                    binding.bind_ortvalue_input(f"past.{layer}.{kind}", value)
                    binding.bind_ortvalue_output(f"present.{layer}.{kind}", value)
                binding.bind_output(f"out.{layer}")
            row[f"ms_past_{past}"] = best_ms(lambda: sess.run_with_iobinding(binding), 20)
        table.append(row)
    return {"heads": heads, "kv_heads": kv, "head_dim": dim, "layers": layers, "capacity": capacity,
            "table": table}


def main():
    fused, work, json_out = sys.argv[1:4]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    matmul_model = matmul_only_model(fused, work)
    matmul = matmul_figures(matmul_model, threads)
    steps = step_figures(fused, threads)
    attention = attention_figures(fused, work, threads)
    table = []
    for rows in ROWS:
        row = {"rows": rows, "matmulnbits_ms": matmul[rows],
               "matmulnbits_ceiling": rows * matmul[1] / matmul[rows]}
        for past in PASTS:
            row[f"step_ms_past_{past}"] = steps[(rows, past)]
            row[f"step_ceiling_past_{past}"] = rows * steps[(1, past)] / steps[(rows, past)]
        table.append(row)
    json.dump({"threads": threads, "onnxruntime": ort.__version__, "pasts": PASTS, "table": table,
               "matmul_shapes": matmul_shapes(matmul_model), "attention": attention},
              open(json_out, "w"), indent=1)
    print(f"ceiling: {json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
