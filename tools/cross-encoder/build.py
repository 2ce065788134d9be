"""A tiny BERT for sequence classification (one label) with random weights, as ONNX, in the
layout Hugging Face cross-encoder exports use: inputs input_ids, attention_mask, token_type_ids
(int64 [batch, seq]); output logits (float32 [batch, 1]).

usage: build.py TOKENIZER_JSON OUT_DIR
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

tokenizer_json, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
vocab = len(json.load(open(tokenizer_json))["model"]["vocab"])
HIDDEN, HEADS, LAYERS, FFN, POSITIONS = 32, 2, 2, 64, 128
HEAD = HIDDEN // HEADS
rng = np.random.default_rng(7)
inits, nodes = [], []


def weight(name, *shape, scale=0.2):
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
    return name


def const(name, value, dtype=np.float32):
    inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
    return name


def node(op, inputs, name, **attrs):
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
    return name


def layer_norm(x, name):
    gamma = const(f"{name}.gamma", np.ones(HIDDEN))
    beta = const(f"{name}.beta", np.zeros(HIDDEN))
    return node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-12)


def linear(x, n_in, n_out, name):
    y = node("MatMul", [x, weight(f"{name}.weight", n_in, n_out)], f"{name}.matmul")
    return node("Add", [y, weight(f"{name}.bias", n_out, scale=0.02)], name)


def heads(x, name):
    # [B, S, H] -> [B, heads, S, head]
    r = node("Reshape", [x, const(f"{name}.shape", [0, 0, HEADS, HEAD], np.int64)], f"{name}.split")
    return node("Transpose", [r], name, perm=[0, 2, 1, 3])


word = node("Gather", [weight("word_embeddings", vocab, HIDDEN), "input_ids"], "word")
seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("one", 1, np.int64)], "seq_len")
positions = node("Range", [const("zero", 0, np.int64), seq, const("step", 1, np.int64)], "positions")
pos = node("Gather", [weight("position_embeddings", POSITIONS, HIDDEN), positions], "pos")
kind = node("Gather", [weight("token_type_embeddings", 2, HIDDEN), "token_type_ids"], "kind")
x = layer_norm(node("Add", [node("Add", [word, pos], "word_pos"), kind], "embedded"), "embeddings.norm")

mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
mask = node("Unsqueeze", [mask, const("mask_axes", [1, 2], np.int64)], "mask_4d")
bias = node("Mul", [node("Sub", [const("onef", 1.0), mask], "mask_inv"), const("neg", -10000.0)], "mask_bias")
for i in range(LAYERS):
    p = f"layer{i}"
    q = heads(linear(x, HIDDEN, HIDDEN, f"{p}.q"), f"{p}.qh")
    k = heads(linear(x, HIDDEN, HIDDEN, f"{p}.k"), f"{p}.kh")
    v = heads(linear(x, HIDDEN, HIDDEN, f"{p}.v"), f"{p}.vh")
    kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
    scores = node("Div", [node("MatMul", [q, kt], f"{p}.qk"), const(f"{p}.scale", np.sqrt(HEAD))], f"{p}.scaled")
    probs = node("Softmax", [node("Add", [scores, bias], f"{p}.masked")], f"{p}.probs", axis=-1)
    ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx_t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, const(f"{p}.merge", [0, 0, HIDDEN], np.int64)], f"{p}.merged")
    x = layer_norm(node("Add", [x, linear(ctx, HIDDEN, HIDDEN, f"{p}.o")], f"{p}.res1"), f"{p}.norm1")
    h = linear(x, HIDDEN, FFN, f"{p}.up")
    erf = node("Erf", [node("Div", [h, const(f"{p}.sqrt2", np.sqrt(2.0))], f"{p}.h_s")], f"{p}.erf")
    gelu = node("Mul", [node("Mul", [h, node("Add", [erf, const(f"{p}.onef", 1.0)], f"{p}.erf1")], f"{p}.hx"),
                        const(f"{p}.half", 0.5)], f"{p}.gelu")
    x = layer_norm(node("Add", [x, linear(gelu, FFN, HIDDEN, f"{p}.down")], f"{p}.res2"), f"{p}.norm2")

cls = node("Gather", [x, const("cls_index", 0, np.int64)], "cls", axis=1)
pooled = node("Tanh", [linear(cls, HIDDEN, HIDDEN, "pooler")], "pooled")
nodes.append(helper.make_node("Identity", [linear(pooled, HIDDEN, 1, "classifier")], ["logits"], name="logits"))

ints = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])  # noqa: E731
graph = helper.make_graph(
    nodes,
    "tiny-cross-encoder",
    [ints("input_ids"), ints("attention_mask"), ints("token_type_ids")],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="steadytext-tests")
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, f"{out}/model.onnx")
shutil.copy(tokenizer_json, f"{out}/tokenizer.json")
json.dump({"architectures": ["BertForSequenceClassification"], "model_type": "bert", "num_labels": 1,
           "id2label": {"0": "LABEL_0"}, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
           "num_hidden_layers": LAYERS, "intermediate_size": FFN, "max_position_embeddings": POSITIONS,
           "type_vocab_size": 2, "vocab_size": vocab, "pad_token_id": 0}, open(f"{out}/config.json", "w"), indent=1)
print(f"tiny cross-encoder: {vocab} tokens, {LAYERS} layers of {HIDDEN}, in {out}")
