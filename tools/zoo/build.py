#!/usr/bin/env python3
"""The conformance zoo: tiny random-weight decoders of six architectures people pull, each in the
two layouts the Hub ships them in, built offline (numpy, onnx, tokenizers; no torch).

Architectures (what each adds to a Llama-style decoder; configurations shrunk, shapes kept where
they are the point):
  llama3    Llama 3.2: llama3 rope scaling, tied embeddings, Llama 3 chat headers
  qwen2     Qwen2.5: biases on q/k/v, rope theta 1e6, ChatML with its default system turn
  qwen3     Qwen3: RMS norms on q and k per head, head_dim unlike hidden/heads, thinking switch
  phi3      Phi-3: fused qkv_proj and gate_up_proj, as many KV heads as heads, untied lm_head,
            SentencePiece-style tokenizer (byte fallback)
  gemma3    Gemma 3: sliding-window layers (5 of 6) with their own rope base, 1 KV head,
            head_dim 256, (1 + w) norms around attention and MLP, GELU (tanh), scaled embeddings
  smollm3   SmolLM3: layers without rope (every 4th), ChatML with a reasoning-mode system turn

Layouts (one folder each, named ARCH-hf and ARCH-genai):
  hf     transformers.js export: onnx/model_q4.onnx in plain ONNX ops (input_ids, attention_mask,
         position_ids, past_key_values.{i}.key/value in; logits for every position, present.* out;
         the KV grows by concatenation)
  genai  onnxruntime-genai CPU export: model.onnx + model.onnx.data with GroupQueryAttention
         (rotary inside, shared KV buffer), packed QKV and gate+up MatMulNBits with
         accuracy_level 4, and genai_config.json. Gemma 3's sliding layers use GroupQueryAttention's
         local_window_size over a full-length buffer (what builders before onnxruntime-genai 0.16
         wrote; a windowed buffer, `sliding_window` in genai_config.json, is refused at load).

Both layouts hold the same 4-bit weights (MatMulNBits, block 32, zero point 8); the embedding
table stays float32. The build checks that they compute the same function: on every case, the
all-position logits of the hf graph and of the genai graph at accuracy_level 0 (fp32 compute)
agree within TOLERANCE, and fails otherwise.

Tokenizers: no PyPI package ships these families' vocabularies (none found), so the byte-level
BPE family (Llama 3, Qwen, SmolLM3) is the shared SmolLM2 tokenizer plus each family's special
tokens, and the SentencePiece family (Phi-3, Gemma 3) is a BPE with byte fallback trained here on
the shared models' README, with each family's normalizer, decoder and special tokens. Chat templates
are short templates written here in each family's format (not copies of the published ones).

Each folder gets reference.json: for each prompt, the chat text rendered by jinja2, its ids, the
greedy continuation computed by Python onnxruntime's own decode loop on that folder's file (one
intra-op thread, KV concatenated, stop at any eos id), and that continuation's text.

usage: build.py SMOLLM2_DIR OUT_DIR  (the SentencePiece-style vocabularies train on SMOLLM2_DIR/../README.md)
"""

import json
import os
import shutil
import sys

import jinja2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers

# All-position logits of two graphs of the same 4-bit weights in fp32 (plain ops against fused
# kernels): sums in another order. Measured here: at most 2.2e-6.
TOLERANCE = 2e-5
BLOCK = 32
MAX_LEN = 2048
PROMPTS = [
    ("Hello!", 24),
    ("Write one sentence about the sea, then stop.", 32),
    ("List three colours, comma separated, and explain why the sky looks blue on a clear day.", 40),
]

LLAMA3_TEMPLATE = """{{- bos_token }}<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

<|eot_id|>
{%- for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

QWEN2_TEMPLATE = """{%- if messages[0]['role'] != 'system' %}<|im_start|>system
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

QWEN3_TEMPLATE = """{%- for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

PHI3_TEMPLATE = """{% for message in messages %}<|{{ message['role'] }}|>
{{ message['content'] }}<|end|>
{% endfor %}{% if add_generation_prompt %}<|assistant|>
{% else %}{{ eos_token }}{% endif %}"""

GEMMA3_TEMPLATE = """{{ bos_token }}
{%- for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}<start_of_turn>{{ role }}
{{ message['content'] | trim }}<end_of_turn>
{% endfor %}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif %}"""

SMOLLM3_TEMPLATE = """<|im_start|>system
## Metadata

Reasoning Mode: {{ '/think' if enable_thinking else '/no_think' }}

## Custom Instructions

You are a helpful AI assistant named SmolLM, trained by Hugging Face.

<|im_end|>
{% for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if not enable_thinking %}<think>

</think>
{% endif %}{% endif %}"""


def spec(name):
    """The architecture's shrunk configuration and the features its graph must have."""
    base = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128, eps=1e-6, theta=10000.0,
                tied=True, qkv_bias=False, qk_norm=False, gemma=False, fused_hf=False, rope_scaling=None,
                no_rope=[], sliding=[], window=None, local_theta=None)
    return {
        "llama3": dict(base, model_type="llama", arch="LlamaForCausalLM", eps=1e-5, theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       tokenizer="bytelevel", template=LLAMA3_TEMPLATE,
                       specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"],
                       bos="<|begin_of_text|>", eos=["<|eot_id|>", "<|end_of_text|>"]),
        "qwen2": dict(base, model_type="qwen2", arch="Qwen2ForCausalLM", theta=1000000.0, qkv_bias=True,
                      tokenizer="bytelevel", template=QWEN2_TEMPLATE, specials=[], bos=None,
                      eos=["<|im_end|>", "<|endoftext|>"]),
        "qwen3": dict(base, model_type="qwen3", arch="Qwen3ForCausalLM", theta=1000000.0, qk_norm=True,
                      head_dim=32, tokenizer="bytelevel", template=QWEN3_TEMPLATE, specials=[],
                      plain_added=["<think>", "</think>"], bos=None, eos=["<|im_end|>", "<|endoftext|>"]),
        "phi3": dict(base, model_type="phi3", arch="Phi3ForCausalLM", kv_heads=4, eps=1e-5, tied=False,
                     fused_hf=True, tokenizer="sentencepiece-llama", template=PHI3_TEMPLATE,
                     specials=["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>",
                               "<|system|>", "<|user|>"],
                     bos="<s>", eos=["<|end|>", "<|endoftext|>"]),
        "gemma3": dict(base, model_type="gemma3_text", arch="Gemma3ForCausalLM", hidden=128, layers=6, heads=2,
                       kv_heads=1, head_dim=256, theta=1000000.0, local_theta=10000.0, qk_norm=True, gemma=True,
                       sliding=[0, 1, 2, 3, 4], window=16, tokenizer="sentencepiece-gemma",
                       template=GEMMA3_TEMPLATE,
                       specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                       bos="<bos>", eos=["<eos>", "<end_of_turn>"]),
        "smollm3": dict(base, model_type="smollm3", arch="SmolLM3ForCausalLM", layers=4, theta=5000000.0,
                        no_rope=[3], tokenizer="bytelevel", template=SMOLLM3_TEMPLATE, specials=[], bos=None,
                        eos=["<|im_end|>", "<|endoftext|>"]),
    }[name]


ARCHITECTURES = ["llama3", "qwen2", "qwen3", "phi3", "gemma3", "smollm3"]


# ---------------------------------------------------------------------------------------------
# Tokenizers


def sentencepiece_tokenizer(s, corpus):
    """A BPE with byte fallback in the SentencePiece style, trained on the text file `corpus`:
    specials first, then the 256 byte tokens <0x00>..<0xFF>, then the learned pieces."""
    gemma = s["tokenizer"] == "sentencepiece-gemma"
    replace = normalizers.Replace(" ", "\u2581")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = replace if gemma else normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=s["specials"], show_progress=False,
                                  initial_alphabet=[], limit_alphabet=200)
    texts = [line for line in open(corpus, encoding="utf-8") if line.strip()]
    tok.train_from_iterator(texts, trainer)
    spec_json = json.loads(tok.to_str())
    learned = [t for t, _ in sorted(spec_json["model"]["vocab"].items(), key=lambda kv: kv[1])
               if t not in s["specials"]]
    ordered = s["specials"] + [f"<0x{b:02X}>" for b in range(256)] + learned
    spec_json["model"]["vocab"] = {t: i for i, t in enumerate(ordered)}
    for added in spec_json["added_tokens"]:
        added["id"] = ordered.index(added["content"])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if not gemma:
        steps.append(decoders.Strip(" ", 1, 0))
    trained = Tokenizer.from_str(json.dumps(spec_json))
    trained.decoder = decoders.Sequence(steps)
    return trained


def tokenizer_for(s, smollm2_dir, corpus):
    if s["tokenizer"] == "bytelevel":
        tok = Tokenizer.from_file(os.path.join(smollm2_dir, "tokenizer.json"))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in s["specials"]])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in s.get("plain_added", [])])
        return tok
    return sentencepiece_tokenizer(s, corpus)


# ---------------------------------------------------------------------------------------------
# Weights


def quantize(w):
    """float32 [K, N] -> MatMulNBits' (uint8 [N, K/32, 16], float32 scales [N, K/32]), 4 bits,
    zero point 8 (the default when no zero points are given), and the dequantized [K, N]."""
    k, n = w.shape
    blocks = w.T.reshape(n, k // BLOCK, BLOCK)
    scale = np.abs(blocks).max(axis=2) / 7.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[:, :, None]), -8, 7).astype(np.int64) + 8
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return {"q": packed, "scales": scale.astype(np.float32), "K": k, "N": n}


def weights(s, vocab, rng):
    """Random weights, keyed like the Hugging Face checkpoint (linear weights as [in, out])."""
    h, d, hq, hkv, f = s["hidden"], s["head_dim"], s["heads"], s["kv_heads"], s["ffn"]

    def linear(k, n):
        return (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)

    def gain(n):
        # Stored as the effective gain; Gemma's checkpoints hold w with the norm using 1 + w.
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    # A tied table as large as the layers' outputs keeps each position's own token the likeliest
    # next one (greedy text collapses to one repeated token): kept small, the layers decide.
    w = {"embed": rng.standard_normal((vocab, h)).astype(np.float32) * (0.02 if s["tied"] else 1.0),
         "norm": gain(h)}
    for i in range(s["layers"]):
        p = f"layers.{i}."
        w[p + "q"], w[p + "k"], w[p + "v"] = linear(h, hq * d), linear(h, hkv * d), linear(h, hkv * d)
        w[p + "o"] = linear(hq * d, h)
        w[p + "gate"], w[p + "up"], w[p + "down"] = linear(h, f), linear(h, f), linear(f, h)
        w[p + "input_norm"], w[p + "post_attn_norm"] = gain(h), gain(h)
        if s["gemma"]:
            w[p + "pre_ffn_norm"], w[p + "post_ffn_norm"] = gain(h), gain(h)
        if s["qkv_bias"]:
            for n, width in (("q", hq * d), ("k", hkv * d), ("v", hkv * d)):
                w[p + n + "_bias"] = (0.5 * rng.standard_normal(width)).astype(np.float32)
        if s["qk_norm"]:
            w[p + "q_norm"], w[p + "k_norm"] = gain(d), gain(d)
    w["lm_head"] = w["embed"].T.copy() if s["tied"] else linear(h, vocab)
    # 4-bit once; both layouts use these. Packing q|k|v or gate|up along N quantizes the same blocks.
    quant = {name: quantize(a) for name, a in w.items()
             if a.ndim == 2 and name != "embed"}
    return w, quant


def inv_freq(s, theta):
    d = s["head_dim"]
    freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    r = s["rope_scaling"]
    if r and r["rope_type"] == "llama3":
        # transformers' _compute_llama3_parameters.
        low_wavelen = r["original_max_position_embeddings"] / r["low_freq_factor"]
        high_wavelen = r["original_max_position_embeddings"] / r["high_freq_factor"]
        wavelen = 2 * np.pi / freq
        scaled = np.where(wavelen > low_wavelen, freq / r["factor"], freq)
        smooth = (r["original_max_position_embeddings"] / wavelen - r["low_freq_factor"]) / (
            r["high_freq_factor"] - r["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / r["factor"] + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        freq = np.where(medium, smoothed, scaled)
    return freq.astype(np.float32)


def rope_tables(s, theta):
    freqs = np.arange(MAX_LEN, dtype=np.int64).astype(np.float32)[:, None] * inv_freq(s, theta)[None, :]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def layer_theta(s, i):
    return s["local_theta"] if i in s["sliding"] else s["theta"]


# ---------------------------------------------------------------------------------------------
# Graphs


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count, self.consts = [], [], 0, {}

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value, dtype=np.int64):
        key = (repr(value), np.dtype(dtype).str)
        if key not in self.consts:
            self.consts[key] = self.init(f"const_{len(self.consts)}", np.array(value, dtype=dtype))
        return self.consts[key]

    def op(self, op, inputs, outputs=1, domain="", **attrs):
        names = [f"{op}_{self.count}_{k}" for k in range(outputs)] if isinstance(outputs, int) else outputs
        self.count += 1
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self.count}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def matmul(self, x, parts, name, quant, level):
        """One MatMulNBits over the 4-bit weights `parts` side by side along N."""
        qs = [quant[p] for p in parts]
        q = self.init(f"{name}.qweight", np.concatenate([p["q"] for p in qs], axis=0))
        sc = self.init(f"{name}.scales", np.concatenate([p["scales"] for p in qs], axis=0))
        return self.op("MatMulNBits", [x, q, sc], domain="com.microsoft", K=qs[0]["K"],
                       N=sum(p["N"] for p in qs), bits=4, block_size=BLOCK, accuracy_level=level)

    def rms_norm(self, x, weight, eps, name):
        return self.op("SimplifiedLayerNormalization", [x, self.init(name, weight)], axis=-1, epsilon=eps,
                       stash_type=1)


def mlp(g, s, w, quant, x, i, level, packed):
    p = f"layers.{i}."
    if packed:
        gate, up = g.op("Split", [g.matmul(x, [p + "gate", p + "up"], p + "gate_up_proj", quant, level)], 2,
                        axis=-1, num_outputs=2)
    else:
        gate = g.matmul(x, [p + "gate"], p + "gate_proj", quant, level)
        up = g.matmul(x, [p + "up"], p + "up_proj", quant, level)
    if s["gemma"]:
        act = g.op("FastGelu", [gate], domain="com.microsoft") if packed else gelu_tanh(g, gate)
    else:
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
    return g.matmul(g.op("Mul", [act, up]), [p + "down"], p + "down_proj", quant, level)


def gelu_tanh(g, x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in plain ops (transformers' gelu_pytorch_tanh)."""
    f = np.float32
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, f)])]),
                         g.const(np.sqrt(2.0 / np.pi), f)])
    return g.op("Mul", [g.op("Mul", [x, g.const(0.5, f)]), g.op("Add", [g.op("Tanh", [inner]), g.const(1.0, f)])])


def decoder_layers(g, s, w, quant, x, attention, level, packed):
    """The residual stream through every layer; `attention(normed, i)` gives the layer's
    attention output before o_proj is applied."""
    eps = s["eps"]
    for i in range(s["layers"]):
        p = f"layers.{i}."
        normed = g.rms_norm(x, w[p + "input_norm"], eps, p + "input_norm")
        attn = g.matmul(attention(normed, i), [p + "o"], p + "o_proj", quant, level)
        if s["gemma"]:
            x = g.op("Add", [x, g.rms_norm(attn, w[p + "post_attn_norm"], eps, p + "post_attn_norm")])
            normed = g.rms_norm(x, w[p + "pre_ffn_norm"], eps, p + "pre_ffn_norm")
            x = g.op("Add", [x, g.rms_norm(mlp(g, s, w, quant, normed, i, level, packed), w[p + "post_ffn_norm"],
                                           eps, p + "post_ffn_norm")])
        else:
            x = g.op("Add", [x, attn])
            normed = g.rms_norm(x, w[p + "post_attn_norm"], eps, p + "post_attn_norm")
            x = g.op("Add", [x, mlp(g, s, w, quant, normed, i, level, packed)])
    final = g.rms_norm(x, w["norm"], eps, "norm")
    return g.matmul(final, ["lm_head"], "lm_head", quant, level)


def embedding(g, s, w):
    x = g.op("Gather", [g.init("embed_tokens", w["embed"]), "input_ids"], axis=0)
    if s["gemma"]:
        x = g.op("Mul", [x, g.const(np.sqrt(s["hidden"]), np.float32)])
    return x


def qkv_biased(g, s, w, qkv, i):
    p = f"layers.{i}."
    if not s["qkv_bias"]:
        return qkv
    bias = np.concatenate([w[p + "q_bias"], w[p + "k_bias"], w[p + "v_bias"]])
    return g.op("Add", [qkv, g.init(p + "qkv_bias", bias)])


def heads_norm(g, s, w, x, heads, name, i):
    """Qwen3 / Gemma 3: an RMS norm over each head's vector of x [batch, seq, heads * head_dim]."""
    d = s["head_dim"]
    split = g.op("Reshape", [x, g.const([0, 0, heads, d])])
    normed = g.rms_norm(split, w[f"layers.{i}.{name}"], s["eps"], f"layers.{i}.{name}")
    return g.op("Reshape", [normed, g.const([0, 0, heads * d])])


def io(s, vocab, layout):
    f32 = TensorProto.FLOAT
    hkv, d = s["kv_heads"], s["head_dim"]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    if layout == "hf":
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                    ["batch_size", "sequence_length"]))
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    for i in range(s["layers"]):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch_size", hkv, "past_sequence_length", d]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch_size", hkv, "total_sequence_length", d]))
    return inputs, outputs


def genai_graph(s, w, quant, vocab, level):
    g = Graph()
    hq, hkv, d = s["heads"], s["kv_heads"], s["head_dim"]
    x = embedding(g, s, w)
    mask_sum = g.op("ReduceSum", ["attention_mask", g.const([1])], keepdims=0)
    seqlens_k = g.op("Cast", [g.op("Sub", [mask_sum, g.const(1)])], to=TensorProto.INT32)
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const(1)], axis=0)],
                 to=TensorProto.INT32)
    caches = {}
    for theta in {layer_theta(s, i) for i in range(s["layers"])}:
        cos, sin = rope_tables(s, theta)
        caches[theta] = (g.init(f"cos_cache_{int(theta)}", cos), g.init(f"sin_cache_{int(theta)}", sin))

    def attention(normed, i):
        p = f"layers.{i}."
        qkv = qkv_biased(g, s, w, g.matmul(normed, [p + "q", p + "k", p + "v"], p + "qkv_proj", quant, level), i)
        if s["qk_norm"]:
            q, k, v = g.op("Split", [qkv, g.const([hq * d, hkv * d, hkv * d])], 3, axis=-1)
            qkv_inputs = [heads_norm(g, s, w, q, hq, "q_norm", i), heads_norm(g, s, w, k, hkv, "k_norm", i), v]
        else:
            qkv_inputs = [qkv, "", ""]
        rotary = i not in s["no_rope"]
        cos, sin = caches[layer_theta(s, i)] if rotary else ("", "")
        # local_window_size W keeps the last W keys, the query's own included: transformers'
        # sliding_window (checked here against the hf graph's mask; W - 1 differs from 16 tokens on).
        window = s["window"] if i in s["sliding"] else -1
        out, _, _ = g.op("GroupQueryAttention",
                         qkv_inputs + [f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total,
                                       cos, sin],
                         [f"layers.{i}.attn", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft",
                         num_heads=hq, kv_num_heads=hkv, scale=float(1.0 / np.sqrt(d)), do_rotary=int(rotary),
                         rotary_interleaved=0, local_window_size=window)
        return out

    logits = decoder_layers(g, s, w, quant, x, attention, level, packed=True)
    g.nodes[-1].output[0] = "logits"
    assert logits
    inputs, outputs = io(s, vocab, "genai")
    return make_model(g, inputs, outputs)


def hf_graph(s, w, quant, vocab):
    g = Graph()
    hq, hkv, d = s["heads"], s["kv_heads"], s["head_dim"]
    group, f32 = hq // hkv, np.float32
    x = embedding(g, s, w)
    # Which keys each query sees, from the mask and the positions: key j (position cumsum(mask)-1)
    # is visible to a query at position p when mask[j] = 1 and j's position <= p (and, in a sliding
    # layer, p - position < window).
    key_pos = g.op("Sub", [g.op("CumSum", ["attention_mask", g.const(1)]), g.const(1)])
    key_pos = g.op("Unsqueeze", [key_pos, g.const([1])])  # [b, 1, t]
    query_pos = g.op("Unsqueeze", ["position_ids", g.const([2])])  # [b, s, 1]
    present = g.op("Unsqueeze", [g.op("Equal", ["attention_mask", g.const(1)]), g.const([1])])
    causal = g.op("And", [g.op("LessOrEqual", [key_pos, query_pos]), present])

    def bias(allowed):
        where = g.op("Where", [allowed, g.const(0.0, f32), g.const(-1e9, f32)])
        return g.op("Unsqueeze", [where, g.const([1, 2])])  # [b, 1, 1, s, t]

    full_bias = bias(causal)
    if s["sliding"]:
        window_bias = bias(g.op("And", [causal, g.op("Less", [g.op("Sub", [query_pos, key_pos]), g.const(s["window"])])]))
    tables = {}
    for theta in {layer_theta(s, i) for i in range(s["layers"])}:
        cos, sin = rope_tables(s, theta)
        c = g.op("Gather", [g.init(f"cos_{int(theta)}", cos), "position_ids"], axis=0)
        n = g.op("Gather", [g.init(f"sin_{int(theta)}", sin), "position_ids"], axis=0)
        tables[theta] = tuple(g.op("Unsqueeze", [g.op("Concat", [t, t], axis=-1), g.const([1])]) for t in (c, n))

    def rope(t, i):  # t [b, heads, s, d]
        cos, sin = tables[layer_theta(s, i)]
        first, second = g.op("Split", [t], 2, axis=-1, num_outputs=2)
        rotated = g.op("Concat", [g.op("Neg", [second]), first], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotated, sin])])

    def heads(t, n):  # [b, s, n * d] -> [b, n, s, d]
        return g.op("Transpose", [g.op("Reshape", [t, g.const([0, 0, n, d])])], perm=[0, 2, 1, 3])

    def attention(normed, i):
        p = f"layers.{i}."
        if s["fused_hf"]:
            qkv = g.matmul(normed, [p + "q", p + "k", p + "v"], p + "qkv_proj", quant, 0)
            q, k, v = g.op("Split", [qkv, g.const([hq * d, hkv * d, hkv * d])], 3, axis=-1)
        else:
            q, k, v = (g.matmul(normed, [p + n], f"{p}{n}_proj", quant, 0) for n in "qkv")
            if s["qkv_bias"]:
                q, k, v = (g.op("Add", [t, g.init(f"{p}{n}_bias", w[f"{p}{n}_bias"])])
                           for t, n in zip((q, k, v), "qkv"))
        if s["qk_norm"]:
            q, k = heads_norm(g, s, w, q, hq, "q_norm", i), heads_norm(g, s, w, k, hkv, "k_norm", i)
        q, k, v = heads(q, hq), heads(k, hkv), heads(v, hkv)
        if i not in s["no_rope"]:
            q, k = rope(q, i), rope(k, i)
        k = g.op("Concat", [f"past_key_values.{i}.key", k], [f"present.{i}.key"], axis=2)
        v = g.op("Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"], axis=2)
        # Query head h reads KV head h // group: [b, kv, group, s, d] against [b, kv, 1, t, d].
        q5 = g.op("Reshape", [q, g.const([0, hkv, group, -1, d])])
        scores = g.op("MatMul", [q5, g.op("Unsqueeze", [g.op("Transpose", [k], perm=[0, 1, 3, 2]), g.const([2])])])
        scores = g.op("Add", [g.op("Mul", [scores, g.const(1.0 / np.sqrt(d), f32)]),
                              window_bias if i in s["sliding"] else full_bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), g.op("Unsqueeze", [v, g.const([2])])])
        ctx = g.op("Transpose", [g.op("Reshape", [ctx, g.const([0, hq, -1, d])])], perm=[0, 2, 1, 3])
        return g.op("Reshape", [ctx, g.const([0, 0, hq * d])])

    decoder_layers(g, s, w, quant, x, attention, 0, packed=False)
    g.nodes[-1].output[0] = "logits"
    inputs, outputs = io(s, vocab, "hf")
    return make_model(g, inputs, outputs)


def make_model(g, inputs, outputs):
    graph = helper.make_graph(g.nodes, "steadytext_zoo", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="steadytext tools/zoo/build.py")
    model.ir_version = 10
    return model


# ---------------------------------------------------------------------------------------------
# Folders and references


def configs(name, s, tok):
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = [tok.token_to_id(t) for t in s["eos"]]
    # ChatML families name <|endoftext|> as bos in config.json (their templates write none);
    # onnxruntime-genai requires a number there.
    bos = tok.token_to_id(s["bos"] or "<|endoftext|>")
    config = {
        "architectures": [s["arch"]], "model_type": s["model_type"], "hidden_size": s["hidden"],
        "intermediate_size": s["ffn"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"], "rms_norm_eps": s["eps"],
        "rope_theta": s["theta"], "max_position_embeddings": MAX_LEN, "vocab_size": vocab,
        "tie_word_embeddings": s["tied"], "eos_token_id": ids, "bos_token_id": bos,
        "torch_dtype": "float32", "_zoo": f"steadytext tools/zoo/build.py: a tiny random-weight {name}",
    }
    if s["rope_scaling"]:
        config["rope_scaling"] = s["rope_scaling"]
    if s["qkv_bias"]:
        config["attention_bias"] = True
    if s["sliding"]:
        config.update(sliding_window=s["window"], rope_local_base_freq=s["local_theta"],
                      query_pre_attn_scalar=s["head_dim"], hidden_activation="gelu_pytorch_tanh",
                      layer_types=["sliding_attention" if i in s["sliding"] else "full_attention"
                                   for i in range(s["layers"])])
    if s["no_rope"]:
        config["no_rope_layers"] = [0 if i in s["no_rope"] else 1 for i in range(s["layers"])]
    tokenizer_config = {"bos_token": s["bos"], "eos_token": s["eos"][0], "chat_template": s["template"],
                        "clean_up_tokenization_spaces": False}
    generation = {"eos_token_id": ids, "bos_token_id": bos}
    return config, tokenizer_config, generation


def genai_config(s, config):
    return {
        "model": {
            "bos_token_id": config["bos_token_id"], "context_length": MAX_LEN,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": s["head_dim"], "hidden_size": s["hidden"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": s["heads"], "num_hidden_layers": s["layers"],
                "num_key_value_heads": s["kv_heads"],
            },
            "eos_token_id": config["eos_token_id"], "pad_token_id": config["eos_token_id"][0],
            "type": s["model_type"], "vocab_size": config["vocab_size"],
        },
        "search": {"do_sample": False, "max_length": MAX_LEN, "num_beams": 1, "past_present_share_buffer": True,
                   "top_k": 1},
    }


def session(model_bytes_or_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])


def run(sess, s, ids, past, done, positions):
    inputs = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, done + len(ids)), np.int64),
              **past}
    if positions:
        inputs["position_ids"] = np.arange(done, done + len(ids), dtype=np.int64)[None, :]
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def empty_past(s):
    return {f"past_key_values.{i}.{k}": np.zeros((1, s["kv_heads"], 0, s["head_dim"]), np.float32)
            for i in range(s["layers"]) for k in ("key", "value")}


def greedy(sess, s, ids, max_new, eos, positions):
    """Python onnxruntime's decode loop: the prompt in one call, then one token a call."""
    past, feed, done, out = empty_past(s), list(ids), 0, []
    for _ in range(max_new):
        values = run(sess, s, feed, past, done, positions)
        past = {f"past_key_values.{i}.{k}": values[f"present.{i}.{k}"] for i in range(s["layers"])
                for k in ("key", "value")}
        done += len(feed)
        token = int(np.argmax(values["logits"][0, -1]))
        if token in eos:
            break
        out.append(token)
        feed = [token]
    return out


def streamed_text(tok, ids):
    """The text steadytext streams for `ids` (src/engine/generate.rs, Detokenizer): each piece is
    the window's new text once it ends in a whole character. It equals tok.decode(ids) except
    where a byte-fallback run turns invalid across a piece already sent (that piece stands)."""
    prefix_offset = read_offset = 0
    out = []
    for n in range(1, len(ids) + 1):
        while True:
            prefix = tok.decode(ids[prefix_offset:read_offset])
            full = tok.decode(ids[prefix_offset:n])
            if len(full.encode()) <= len(prefix.encode()) or full.endswith("\ufffd"):
                break
            if full.startswith(prefix):
                out.append(full[len(prefix):])
                prefix_offset, read_offset = read_offset, n
                break
            if prefix_offset == read_offset:
                break
            prefix_offset = read_offset
    if read_offset < len(ids):
        prefix, full = tok.decode(ids[prefix_offset:read_offset]), tok.decode(ids[prefix_offset:])
        out.append(full[len(prefix):] if full.startswith(prefix) else tok.decode(ids[read_offset:]))
    return "".join(out)


def save(model, folder, onnx_name, data_name):
    os.makedirs(os.path.dirname(os.path.join(folder, onnx_name)), exist_ok=True)
    onnx.save_model(model, os.path.join(folder, onnx_name), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name, size_threshold=1024)


def build(name, smollm2_dir, corpus, out_dir):
    s = spec(name)
    tok = tokenizer_for(s, smollm2_dir, corpus)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(sum(map(ord, name)))
    w, quant = weights(s, vocab, rng)
    config, tokenizer_config, generation = configs(name, s, tok)
    template = jinja2.Environment().from_string(s["template"])
    hf = hf_graph(s, w, quant, vocab)
    layouts = {"hf": (hf, "onnx/model_q4.onnx", "model_q4.onnx_data", True),
               "genai": (genai_graph(s, w, quant, vocab, 4), "model.onnx", "model.onnx.data", False)}
    genai_fp32 = session(genai_graph(s, w, quant, vocab, 0).SerializeToString())
    hf_session = session(hf.SerializeToString())
    eos = set(config["eos_token_id"])
    worst = 0.0
    for layout, (model, onnx_name, data_name, positions) in layouts.items():
        folder = os.path.join(out_dir, f"{name}-{layout}")
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        save(model, tmp, onnx_name, data_name)
        tok.save(os.path.join(tmp, "tokenizer.json"))
        for file, value in (("config.json", config), ("tokenizer_config.json", tokenizer_config),
                            ("generation_config.json", generation)):
            json.dump(value, open(os.path.join(tmp, file), "w"), indent=1)
        if layout == "genai":
            json.dump(genai_config(s, config), open(os.path.join(tmp, "genai_config.json"), "w"), indent=1)
        sess = session(os.path.join(tmp, onnx_name))
        cases = []
        for prompt, max_new in PROMPTS:
            chat = template.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   bos_token=s["bos"] or "", eos_token=s["eos"][0], enable_thinking=False)
            ids = tok.encode(chat, add_special_tokens=False).ids
            out = greedy(sess, s, ids, max_new, eos, positions)
            if layout == "hf":
                # Same function check: one call over prompt + answer, every position.
                seq = ids + out
                a = run(hf_session, s, seq, empty_past(s), 0, True)["logits"][0]
                b = run(genai_fp32, s, seq, empty_past(s), 0, False)["logits"][0]
                diff = float(np.max(np.abs(a - b)))
                worst = max(worst, diff)
                if diff > TOLERANCE:
                    sys.exit(f"{name}: the hf and genai (fp32) graphs' logits differ by {diff} > {TOLERANCE} "
                             f"on {prompt!r}")
            cases.append({"prompt": prompt, "chat_text": chat, "input_ids": ids, "max_new_tokens": max_new,
                          "greedy_ids": out, "text": streamed_text(tok, out),
                          "decoded": tok.decode(out, skip_special_tokens=True)})
        json.dump({"architecture": name, "layout": layout, "onnxruntime": ort.__version__, "intra_op_num_threads": 1,
                   "max_abs_logit_diff_hf_vs_genai_fp32": worst, "cases": cases},
                  open(os.path.join(tmp, "reference.json"), "w"), indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        lengths = [f'{len(c["greedy_ids"])} ({len(set(c["greedy_ids"]))} distinct)' for c in cases]
        print(f"{folder}: vocab {vocab}, {len(model.graph.node)} nodes, greedy ids {', '.join(lengths)}, "
              f"hf vs genai fp32 max |logit diff| {worst:.2e}")


def main():
    smollm2_dir, out_dir = sys.argv[1:3]
    corpus = os.path.join(smollm2_dir, "..", "README.md")
    for name in ARCHITECTURES:
        build(name, smollm2_dir, corpus, out_dir)


if __name__ == "__main__":
    main()
