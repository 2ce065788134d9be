"""A Llama-style decoder of about 1B parameters with random float32 weights, as ONNX in the
Hugging Face export contract the loader serves (the shared SmolLM2's: input_ids, attention_mask,
past_key_values.{i}.key/value [batch, heads, past, head_dim] in; logits, present.{i}.* out),
weights in the external-data file model.onnx_data. For measuring load time, memory and the
watchdog at that size; its text is noise. The tokenizer and chat template are the shared
SmolLM2's (vocabulary 49152).

usage: build.py SMOLLM2_DIR OUT_DIR [LAYERS]
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

source, out = sys.argv[1], sys.argv[2]
LAYERS = int(sys.argv[3]) if len(sys.argv) > 3 else 16
HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB = 2048, 16, 128, 5632, 49152
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(11)
data_name = "model.onnx_data"
data = open(os.path.join(out, data_name), "wb")
inits, nodes, params = [], [], 0


def external(name, array):
    """An initializer whose bytes go to model.onnx_data (never held twice in memory)."""
    global params
    offset = data.tell()
    data.write(array.astype(np.float32).tobytes())
    params += array.size
    t = helper.make_tensor(name, TensorProto.FLOAT, array.shape, vals=[])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.size * 4))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    inits.append(t)
    return name


def weight(name, *shape):
    return external(name, rng.standard_normal(shape, dtype=np.float32) * 0.02)


def const(name, value, dtype=np.int64):
    inits.append(helper.make_tensor(name, TensorProto.INT64 if dtype == np.int64 else TensorProto.FLOAT,
                                    np.shape(value), np.ravel(np.array(value, dtype=dtype)).tolist()))
    return name


def node(op, inputs, name, **attrs):
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
    return name


def rms_norm(x, name):
    gain = external(f"{name}.weight", np.ones(HIDDEN, dtype=np.float32))
    sq = node("Mul", [x, x], f"{name}.sq")
    mean = node("ReduceMean", [sq], f"{name}.mean", axes=[-1], keepdims=1)
    eps = node("Add", [mean, "eps"], f"{name}.eps")
    inv = node("Reciprocal", [node("Sqrt", [eps], f"{name}.sqrt")], f"{name}.inv")
    return node("Mul", [node("Mul", [x, inv], f"{name}.scaled"), gain], f"{name}.out")


const("eps", 1e-5, np.float32)
const("scale", 1.0 / np.sqrt(HEAD_DIM), np.float32)
const("neg", -1e9, np.float32)
const("zero_f", 0.0, np.float32)
const("heads_shape", [0, 0, HEADS, HEAD_DIM])
const("hidden_shape", [0, 0, HIDDEN])
const("one", 1)
const("zero", 0)
# Causal bias [seq, total]: key j is visible to query i (at position past + i) when j <= past + i.
total = node("Gather", [node("Shape", ["attention_mask"], "mask_shape"), "one"], "total", axis=0)
seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "one"], "seq", axis=0)
past = node("Sub", [total, seq], "past")
kpos = node("Range", ["zero", total, "one"], "kpos")
qpos = node("Range", [past, total, "one"], "qpos")
const("axis0", [0])
const("axis1", [1])
visible = node("LessOrEqual", [node("Unsqueeze", [kpos, "axis0"], "kpos2"), node("Unsqueeze", [qpos, "axis1"], "qpos2")], "visible")
bias = node("Where", [visible, "zero_f", "neg"], "causal_bias")

x = node("Gather", [weight("embed_tokens", VOCAB, HIDDEN), "input_ids"], "embedded", axis=0)
inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
          helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
outputs = []
for i in range(LAYERS):
    p = f"layers.{i}"
    h = rms_norm(x, f"{p}.input_norm")

    def heads(kind):
        y = node("MatMul", [h, weight(f"{p}.{kind}_proj", HIDDEN, HEADS * HEAD_DIM)], f"{p}.{kind}")
        return node("Transpose", [node("Reshape", [y, "heads_shape"], f"{p}.{kind}.r")], f"{p}.{kind}.t", perm=[0, 2, 1, 3])

    q, k, v = heads("q"), heads("k"), heads("v")
    kv_shape = ["batch", HEADS, "past", HEAD_DIM]
    present_shape = ["batch", HEADS, "total", HEAD_DIM]
    for kind, new in (("key", k), ("value", v)):
        inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
        nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.{kind}", new], [f"present.{i}.{kind}"], axis=2))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    kt = node("Transpose", [f"present.{i}.key"], f"{p}.kt", perm=[0, 1, 3, 2])
    scores = node("Add", [node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), "scale"], f"{p}.scaled"), bias], f"{p}.masked")
    attn = node("MatMul", [node("Softmax", [scores], f"{p}.probs", axis=-1), f"present.{i}.value"], f"{p}.attn")
    merged = node("Reshape", [node("Transpose", [attn], f"{p}.attn.t", perm=[0, 2, 1, 3]), "hidden_shape"], f"{p}.merged")
    x = node("Add", [x, node("MatMul", [merged, weight(f"{p}.o_proj", HIDDEN, HIDDEN)], f"{p}.o")], f"{p}.res1")
    h2 = rms_norm(x, f"{p}.post_norm")
    gate = node("MatMul", [h2, weight(f"{p}.gate_proj", HIDDEN, FFN)], f"{p}.gate")
    up = node("MatMul", [h2, weight(f"{p}.up_proj", HIDDEN, FFN)], f"{p}.up")
    act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sig")], f"{p}.silu"), up], f"{p}.act")
    x = node("Add", [x, node("MatMul", [act, weight(f"{p}.down_proj", FFN, HIDDEN)], f"{p}.down")], f"{p}.res2")
final = rms_norm(x, "norm")
nodes.append(helper.make_node("MatMul", [final, weight("lm_head", HIDDEN, VOCAB)], ["logits"], name="lm_head"))
outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]))
data.close()

graph = helper.make_graph(nodes, "big_decoder", inputs, outputs, inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.save(model, os.path.join(out, "model.onnx"))
for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"):
    if os.path.exists(os.path.join(source, f)):
        shutil.copy(os.path.join(source, f), out)
config = json.load(open(os.path.join(source, "config.json")))
config.update(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
              num_hidden_layers=LAYERS, intermediate_size=FFN, vocab_size=VOCAB)
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
print(f"{params / 1e9:.2f}B parameters, {os.path.getsize(os.path.join(out, data_name)) / 2**30:.1f} GiB of weights", file=sys.stderr)
