#!/usr/bin/env python3
"""Builds the 1B twin: random weights in Llama-3.2-1B's configuration, written twice from the same
4-bit arrays, for measuring steadytextd against llama.cpp on the same function at a real size.

  genai/            the onnxruntime-genai layout (tools/fused-decoder's graph: GatherBlockQuantized,
                    SimplifiedLayerNormalization, packed QKV MatMulNBits, GroupQueryAttention with
                    rotary inside, packed gate+up, lm_head on the last position only), block 32,
                    accuracy_level 4 (int8 compute), genai_config.json, config.json, the tokenizer
                    and SmolLM2's chat template
  genai-st/         genai/'s graph on steadytext's own kernels (tools/fused-decoder's
                    `on_our_kernels`: int4 x int8 products, attention with a float16 KV cache,
                    norms and SwiGLU in the `ai.steadytext` domain); only steadytextd runs it
  model-q4_0.gguf   GGUF, architecture `llama`, Q4_0 (llama.cpp's converter's q/k row permutation
                    and its llama3 `rope_freqs.weight`), the same 4-bit values and fp16 scales
  twin.json         what was built and the logit check's figures

Quantized once: every weight matrix is cut in blocks of 32 along its input dimension and quantized
with Q4_0's rule (scale d = the block's value of largest magnitude / -8, rounded to fp16; q = x/d + 8
truncated to 0..15). GGUF stores (d, q) as Q4_0; MatMulNBits and GatherBlockQuantized store the same
q with zero point 8 and d as float32 (exact: an fp16 value is a float32 value). Both dequantize to
(q - 8) * d: the two files hold the same weights bit for bit, and differ only in how their kernels
compute (both quantize activations to int8 here: MatMulNBits accuracy_level 4, ggml's Q4_0 x Q8_0).

The logit check proves that both files describe the same function: the same graph with
accuracy_level 0 (fp32 compute on the dequantized weights) in onnxruntime against llama.cpp on an
F32 GGUF of the dequantized weights (F32 KV cache, flash attention off), all 16 layers, on three
random token sequences (prefill, then single decode steps through the KV cache). The build fails
when any logit differs by more than TOLERANCE.

usage: build.py SHARED_SMOLLM2_DIR LLAMA_CPP_PYTHON OUT_DIR
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("fused_build", os.path.join(HERE, "..", "fused-decoder", "build.py"))
fused = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fused)

# Llama-3.2-1B's configuration, from meta-llama/Llama-3.2-1B's public config.json as published on
# the Hugging Face Hub (not re-checked here: the Hub is unreachable from this machine).
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
# The rotary caches (and the context the daemon is told) cover 4,096 positions, not 131,072: the
# benchmark's longest prompt is 2,048 tokens, and a 131,072-row cache would only cost memory.
MAX_LEN = 4096
SEED = 31
# Weights ~ N(0, 0.02^2) (Llama's initializer_range): every projection's output then has unit-order
# variance (0.02 * sqrt(2048) ~ 0.9), so activations and logits stay in a sane range over 16 layers.
# Norm weights 1 + N(0, 0.1^2), not all ones, so that the check sees them used.
WEIGHT_STD, NORM_STD = 0.02, 0.1
BLOCK = 32
# Logits are ~N(0, 1) here. Both engines compute in fp32 but sum in other orders and with other
# kernels (MLAS against ggml), over dot products of 2,048 and 8,192 terms through 16 layers, and
# llama.cpp builds its rotary angles by repeated float multiplication where the ONNX caches come
# from float64: differences of 1e-5 to 1e-4 are expected. 2e-3 is far below what a wrong weight,
# permutation, norm or rotary frequency does (those move logits by O(0.1) to O(1)).
TOLERANCE = 2e-3
# The tokenizer: SmolLM2's (byte-level BPE, 49,152 ids; Llama 3's is not available offline),
# extended with ids up to 128,255 that decode to "<|reserved_N|>" (entries of the BPE vocabulary no
# merge produces), so the model keeps Llama's vocabulary size and lm_head cost.
COPIED_FILES = ["tokenizer_config.json", "chat_template.jinja", "generation_config.json"]


def log(*args):
    print(*args, flush=True)


# ---------- weights ----------

def q4_0(w):
    """Q4_0 of float32 rows [rows, cols]: (q nibbles packed two per byte, element 2j in the low
    nibble - MatMulNBits' layout - [rows, cols/2] uint8, d [rows, cols/32] float16)."""
    rows, cols = w.shape
    b = w.reshape(rows, cols // BLOCK, BLOCK)
    at = np.argmax(np.abs(b), axis=-1)
    most = np.take_along_axis(b, at[..., None], -1)[..., 0]
    d = (most / -8).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.trunc(b * inv[..., None] + 8.5), 0, 15).astype(np.uint8).reshape(rows, cols)
    return q[:, 0::2] | (q[:, 1::2] << 4), d


def unpack(packed):
    q = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    q[:, 0::2], q[:, 1::2] = packed & 15, packed >> 4
    return q


def dequantize(packed, d):
    q = unpack(packed).astype(np.float32) - 8
    rows, cols = q.shape
    return (q.reshape(rows, cols // BLOCK, BLOCK) * d.astype(np.float32)[..., None]).reshape(rows, cols)


def q4_0_bytes(packed, d):
    """GGUF Q4_0 blocks [rows, cols/32 * 18]: fp16 d, then 16 bytes holding element j in the low and
    element j + 16 in the high nibble."""
    q = unpack(packed)
    rows, cols = q.shape
    nb = cols // BLOCK
    q = q.reshape(rows, nb, BLOCK)
    out = np.empty((rows, nb, 18), np.uint8)
    out[..., :2] = d.reshape(rows, nb, 1).view(np.uint8)
    out[..., 2:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(rows, nb * 18)


def random_weights(config):
    """{name: (packed, d)} for every matrix (HF names, HF [out, in] layout) and {name: float32} for
    the norms; the same for a given SEED."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    kv_out = config["num_key_value_heads"] * config["head_dim"]
    shapes = [("embed_tokens", vocab, hidden)]
    for i in range(config["num_hidden_layers"]):
        shapes += [(f"layers.{i}.q_proj", q_out, hidden), (f"layers.{i}.k_proj", kv_out, hidden),
                   (f"layers.{i}.v_proj", kv_out, hidden), (f"layers.{i}.o_proj", hidden, q_out),
                   (f"layers.{i}.gate_proj", inter, hidden), (f"layers.{i}.up_proj", inter, hidden),
                   (f"layers.{i}.down_proj", hidden, inter)]
    mats = {}
    for index, (name, rows, cols) in enumerate(shapes):
        rng = np.random.default_rng([SEED, index])
        packed = np.empty((rows, cols // 2), np.uint8)
        d = np.empty((rows, cols // BLOCK), np.float16)
        for start in range(0, rows, 4096):
            end = min(rows, start + 4096)
            w = rng.standard_normal((end - start, cols), dtype=np.float32) * np.float32(WEIGHT_STD)
            packed[start:end], d[start:end] = q4_0(w)
        mats[name] = (packed, d)
    # The end token's embedding row is zero, so its logit is exactly 0 while the largest of 128,256
    # ~N(0, 1) logits is ~4.5: greedy decoding never stops early and sampled streams almost never,
    # so both engines generate the requested number of tokens (the daemon has no "ignore eos").
    eos = config["eos_token_id"]
    packed, d = mats["embed_tokens"]
    packed[eos], d[eos] = 0x88, 0
    rng = np.random.default_rng([SEED, len(shapes)])
    norms = {}
    for i in range(config["num_hidden_layers"]):
        for n in ("input_layernorm", "post_attention_layernorm"):
            norms[f"layers.{i}.{n}"] = (1 + NORM_STD * rng.standard_normal(hidden)).astype(np.float32)
    norms["norm"] = (1 + NORM_STD * rng.standard_normal(hidden)).astype(np.float32)
    return mats, norms


def llama3_rope_factors(config):
    """llama.cpp's convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors, rope_type llama3): the
    factor dividing each rotary frequency, stored as `rope_freqs.weight`."""
    import math
    rs, dim = config["rope_scaling"], config["head_dim"]
    freqs = 1.0 / (config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def rotary_caches(config, max_len):
    """cos/sin [max_len, head_dim/2] with the llama3-scaled inverse frequencies: Hugging Face's
    inv_freq / factor, which is llama.cpp's theta / rope_freqs (the same factors)."""
    dim = config["head_dim"]
    inv = 1.0 / (config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    inv = inv / llama3_rope_factors(config).astype(np.float64)
    angles = np.arange(max_len, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---------- the genai graph ----------

def part(mats, name):
    packed, d = mats[name]
    n, k = packed.shape[0], packed.shape[1] * 2
    nb = k // BLOCK
    return {"q": packed.reshape(n, nb, BLOCK // 2), "scales": d.astype(np.float32),
            "zeros": np.full((n, (nb + 1) // 2), 0x88, np.uint8), "K": k, "N": n, "bits": 4, "block_size": BLOCK}


def uint4_tensor(name, packed, dims):
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.UINT4
    t.dims.extend(dims)
    t.raw_data = packed.tobytes()
    return t


def genai_model(config, mats, norms, accuracy_level):
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    g = fused.Graph()
    packed, d = mats["embed_tokens"]
    g.inits.append(uint4_tensor("embed_tokens.qweight", packed, [vocab, hidden]))
    g.inits.append(uint4_tensor("embed_tokens.zero_points", np.full((vocab, hidden // BLOCK // 2), 0x88, np.uint8),
                                [vocab, hidden // BLOCK]))
    g.init("embed_tokens.scales", d.astype(np.float32))
    x = g.node("GatherBlockQuantized", ["embed_tokens.qweight", "input_ids", "embed_tokens.scales",
                                        "embed_tokens.zero_points"], ["embeddings"], "embed_tokens",
               domain="com.microsoft", block_size=BLOCK, gather_axis=0, quantize_axis=1)
    def proj(key):
        # Tied: lm_head is the embedding's own 4-bit values (as uint8 blocks for MatMulNBits).
        return part(mats, "embed_tokens" if key == "lm_head" else key)

    model = fused.llama_model(g, config, x, rotary_caches(config, MAX_LEN), norms.__getitem__, proj,
                              accuracy_level, "steadytext_twin_llama_3_2_1b", "steadytext tools/twin/build.py")
    model.ir_version = 10
    return model


def save_genai(model, folder, config, tokenizer, shared_dir):
    os.makedirs(folder)
    onnx.save_model(model, os.path.join(folder, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    json.dump(tokenizer, open(os.path.join(folder, "tokenizer.json"), "w"), ensure_ascii=False)
    for name in COPIED_FILES:
        if os.path.exists(os.path.join(shared_dir, name)):
            shutil.copy(os.path.join(shared_dir, name), folder)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    genai = fused.genai_config(config, MAX_LEN)
    json.dump(genai, open(os.path.join(folder, "genai_config.json"), "w"), indent=2)


# ---------- tokenizer ----------

def extended_tokenizer(shared_dir, vocab_size):
    tok = json.load(open(os.path.join(shared_dir, "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    have = len(vocab)
    assert sorted(vocab.values()) == list(range(have)), "SmolLM2's vocabulary is not dense"
    for i in range(have, vocab_size):
        vocab[f"<|reserved_{i}|>"] = i
    return tok


def gguf_vocab(tok):
    """(tokens by id, token types, merges "a b") as convert_hf_to_gguf.py writes a gpt2 vocabulary."""
    by_id = {i: s for s, i in tok["model"]["vocab"].items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    special = {a["id"] for a in tok["added_tokens"] if a.get("special")}
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


# ---------- GGUF ----------

def permutation(rows, n_head):
    """Row order of convert_hf_to_gguf.py's LlamaModel.permute(weights, n_head, n_head_kv):
    weights.reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2).reshape(weights.shape)."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def write_gguf(path, config, mats, norms, tok, float32):
    """Streams the GGUF: Q4_0 (`float32` False) or the dequantized weights as F32."""
    layers = config["num_hidden_layers"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("steadytext twin of Llama-3.2-1B (random weights)")
    w.add_context_length(MAX_LEN)
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if float32 else gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_vocab_size(config["vocab_size"])
    w.add_rope_dimension_count(config["head_dim"])
    tokens, types, merges = gguf_vocab(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_unk_token_id(0)
    w.add_pad_token_id(config["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    plan = [("token_embd.weight", "embed_tokens", None), ("rope_freqs.weight", llama3_rope_factors(config), None)]
    for i in range(layers):
        plan += [(f"blk.{i}.attn_norm.weight", norms[f"layers.{i}.input_layernorm"], None),
                 (f"blk.{i}.attn_q.weight", f"layers.{i}.q_proj", heads),
                 (f"blk.{i}.attn_k.weight", f"layers.{i}.k_proj", kv_heads),
                 (f"blk.{i}.attn_v.weight", f"layers.{i}.v_proj", None),
                 (f"blk.{i}.attn_output.weight", f"layers.{i}.o_proj", None),
                 (f"blk.{i}.ffn_norm.weight", norms[f"layers.{i}.post_attention_layernorm"], None),
                 (f"blk.{i}.ffn_gate.weight", f"layers.{i}.gate_proj", None),
                 (f"blk.{i}.ffn_up.weight", f"layers.{i}.up_proj", None),
                 (f"blk.{i}.ffn_down.weight", f"layers.{i}.down_proj", None)]
    plan.append(("output_norm.weight", norms["norm"], None))

    def data(source, heads):
        if not isinstance(source, str):
            return source
        packed, d = mats[source]
        if heads is not None:
            order = permutation(packed.shape[0], heads)
            packed, d = packed[order], d[order]
        return dequantize(packed, d) if float32 else q4_0_bytes(packed, d)

    for name, source, heads in plan:
        if isinstance(source, str):
            packed, _ = mats[source]
            rows, cols = packed.shape[0], packed.shape[1] * 2
            if float32:
                w.add_tensor_info(name, (rows, cols), np.dtype(np.float32), rows * cols * 4)
            else:
                w.add_tensor_info(name, (rows, cols // BLOCK * 18), np.dtype(np.uint8), rows * cols // BLOCK * 18,
                                  raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor_info(name, source.shape, source.dtype, source.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, source, heads in plan:
        w.write_tensor_data(data(source, heads))
    w.close()


# ---------- the logit check ----------

def check_prompts(config):
    """Three token sequences (lengths 8, 48, 600) drawn from the whole vocabulary, each run as a
    prefill of all but its last 4 tokens and then 4 single decode steps. The longest reaches the
    positions where llama3's frequency scaling matters (wavelengths over 2,048 positions are
    divided by up to 32: at position 600 a wrong factor moves angles by radians)."""
    rng = np.random.default_rng([SEED, 999])
    return [[int(t) for t in rng.integers(0, config["vocab_size"], n)] for n in (8, 48, 600)]


def ort_logits(model_path, config, prompts, threads=2):
    """Logits of every position from the prefill's last on, onnxruntime's own decode loop."""
    sess = fused.session(model_path, threads)
    layers, kv_heads, head_dim = config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]
    names = [o.name for o in sess.get_outputs()]
    out = []
    for ids in prompts:
        past = {f"past_key_values.{i}.{k}": np.zeros((1, kv_heads, 0, head_dim), np.float32)
                for i in range(layers) for k in ("key", "value")}
        split = len(ids) - 4
        chunks = [ids[:split]] + [[t] for t in ids[split:]]
        done, rows = 0, []
        for chunk in chunks:
            values = dict(zip(names, sess.run(None, {"input_ids": np.array([chunk], np.int64),
                                                     "attention_mask": np.ones((1, done + len(chunk)), np.int64),
                                                     **past})))
            rows.append(values["logits"][0, -1].copy())
            for key in past:
                past[key] = values[key.replace("past_key_values", "present")]
            done += len(chunk)
        out.append(np.stack(rows))
    return out


def llama_logits(python, gguf_path, prompts, scratch):
    """The same positions' logits from llama.cpp (tools/twin/llama_logits.py in the bench venv)."""
    ids_path, out_path = os.path.join(scratch, "prompts.json"), os.path.join(scratch, "llama_logits.npz")
    json.dump(prompts, open(ids_path, "w"))
    subprocess.run([python, os.path.join(HERE, "llama_logits.py"), gguf_path, ids_path, out_path], check=True)
    got = np.load(out_path)
    return [got[f"p{i}"][len(ids) - 5:] for i, ids in enumerate(prompts)]


def compare(a, b):
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    argmax = sum(int(np.argmax(r)) == int(np.argmax(s)) for x, y in zip(a, b) for r, s in zip(x, y))
    rows = sum(len(x) for x in a)
    scale = max(float(np.max(np.abs(x))) for x in a)
    return {"max_abs_diff": worst, "argmax_agree": f"{argmax}/{rows}", "max_abs_logit": scale}


def main():
    shared_dir, llama_python, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    t0 = time.time()
    shared_config = json.load(open(os.path.join(shared_dir, "config.json")))
    config = dict(LLAMA_3_2_1B, bos_token_id=shared_config["bos_token_id"], eos_token_id=shared_config["eos_token_id"],
                  pad_token_id=shared_config["pad_token_id"], unk_token_id=shared_config.get("unk_token_id", 0),
                  max_position_embeddings=LLAMA_3_2_1B["max_position_embeddings"],
                  _twin="random weights (seed %d) in Llama-3.2-1B's configuration; rotary caches for %d positions"
                  % (SEED, MAX_LEN))
    tok = extended_tokenizer(shared_dir, config["vocab_size"])
    log(f"twin: random weights, Llama-3.2-1B configuration, Q4_0 blocks of {BLOCK}")
    mats, norms = random_weights(config)
    params = sum(p.shape[0] * p.shape[1] * 2 for p, _ in mats.values())
    log(f"twin: {params / 1e9:.3f} B matrix parameters quantized ({time.time() - t0:.0f} s)")

    genai_dir = os.path.join(out_dir, "genai")
    save_genai(genai_model(config, mats, norms, 4), genai_dir, config, tok, shared_dir)
    log(f"twin: {genai_dir} written ({time.time() - t0:.0f} s)")
    # Read back: saving with external data emptied the in-memory tensors.
    st_dir = os.path.join(out_dir, "genai-st")
    save_genai(fused.on_our_kernels(onnx.load(os.path.join(genai_dir, "model.onnx"))), st_dir, config, tok, shared_dir)
    log(f"twin: {st_dir} written ({time.time() - t0:.0f} s)")
    write_gguf(os.path.join(out_dir, "model-q4_0.gguf"), config, mats, norms, tok, float32=False)
    log(f"twin: model-q4_0.gguf written ({time.time() - t0:.0f} s)")

    # The logit check, in a scratch folder removed afterwards (the F32 GGUF is ~5 GB).
    scratch = os.path.join(out_dir, "check")
    os.makedirs(scratch)
    acc0 = os.path.join(scratch, "acc0")
    save_genai(genai_model(config, mats, norms, 0), acc0, config, tok, shared_dir)
    f32_gguf = os.path.join(scratch, "model-f32.gguf")
    write_gguf(f32_gguf, config, mats, norms, tok, float32=True)
    del mats
    log(f"twin: check models written ({time.time() - t0:.0f} s)")
    prompts = check_prompts(config)
    fp32 = compare(ort_logits(os.path.join(acc0, "model.onnx"), config, prompts),
                   llama_logits(llama_python, f32_gguf, prompts, scratch))
    log(f"twin: fp32 logit check (onnxruntime accuracy_level 0 vs llama.cpp F32 GGUF, {config['num_hidden_layers']} layers): {fp32}, "
        f"tolerance {TOLERANCE}")
    # The int4 pair, for information (not a gate): both quantize activations to int8, differently.
    int4 = compare(ort_logits(os.path.join(genai_dir, "model.onnx"), config, prompts),
                   llama_logits(llama_python, os.path.join(out_dir, "model-q4_0.gguf"), prompts, scratch))
    log(f"twin: int4 pair (onnxruntime accuracy_level 4 vs llama.cpp Q4_0), for information: {int4}")
    shutil.rmtree(scratch)
    json.dump({"config": config, "seed": SEED, "max_len": MAX_LEN, "check_prompts": prompts,
               "fp32_check": {**fp32, "tolerance": TOLERANCE, "layers": config["num_hidden_layers"]},
               "int4_pair": int4, "build_seconds": time.time() - t0},
              open(os.path.join(out_dir, "twin.json"), "w"), indent=1)
    if not fp32["max_abs_diff"] <= TOLERANCE:
        sys.exit(f"twin: the fp32 logits differ by {fp32['max_abs_diff']} (> {TOLERANCE}): the two files do not "
                 "compute the same function")
    log(f"twin: built in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
