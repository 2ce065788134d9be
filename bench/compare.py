#!/usr/bin/env python3
"""steadytextd through its socket against the anchors a user could run instead, on the same
work, in one run: Python onnxruntime on the shared model and on the fused model, llama.cpp
(llama-cpp-python) on the SmolLM2 Q4_1 GGUF, and fastembed on the shared MiniLM model; and the
prefix cache on and off (`--only prefix` runs that section alone); and with `--twin DIR`, the 1B
twin section (bench/twin.py: steadytextd against llama.cpp on the same random 1B weights;
`--only twin` runs it alone).

Prints one table and writes JSON (figures and ratios) to the path given by --json.
Run through `make bench` (which builds everything it needs); CI does not run it.
"""

import argparse
import base64
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

THREADS = 2
SHORT, LONG = 48, 512
# A raw (untemplated) prompt whose greedy continuation runs past 512 tokens on SmolLM2 without
# an end token, so every engine generates the same number of tokens.
LONG_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
IDLE_SECS = 10
# Each figure is the best of this many passes.
PASSES = 3


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def sentences(n, seed):
    """n sentences of mixed length (3 to 120 words), the same every run."""
    rng = random.Random(seed)
    words = ("the model answers every question with the same bytes because determinism is the product and "
             "operators rely on caches restarts batching threads and arrival order never changing a vector").split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([3, 6, 10, 16, 24, 40, 64, 120]))) + "."
            for _ in range(n)]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mb(pid, field):
    """A memory figure of /proc/PID/status (VmRSS, VmHWM...) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid):
    return status_mb(pid, "VmHWM")


class Daemon:
    """steadytextd started the way systemd does (systemd-socket-activate execs it on the first
    connection), one JSON-RPC connection kept open."""

    def __init__(self, bin_dir, config):
        self.dir = tempfile.mkdtemp(prefix="steadytext-bench-")
        self.socket_path = os.path.join(self.dir, "steadytext.sock")
        config_path = os.path.join(self.dir, "steadytext.toml")
        with open(config_path, "w") as f:
            f.write(config)
        env = [f"--setenv={k}={os.environ[k]}" for k in ("ORT_DYLIB_PATH", "STEADYTEXT_MODEL_DIR")]
        env.append(f"--setenv=STATE_DIRECTORY={self.dir}/state")
        root = ["--allow-root"] if os.geteuid() == 0 else []
        self.log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", self.socket_path, "--fdname=unix", *env,
             os.path.join(bin_dir, "steadytextd"), "--config", config_path, *root],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 10
        while not os.path.exists(self.socket_path):
            if time.time() > deadline:
                sys.exit("the daemon's socket never appeared")
            time.sleep(0.01)
        self.conn = None
        self.next_id = 0

    def connect(self):
        self.client = Client(self.socket_path, self.log.name)

    def call(self, method, params, on_piece=None):
        if self.conn is None:
            self.connect()
            self.conn = self.client
        return self.client.call(method, params, on_piece)

    def settle(self, timeout=120):
        """Waits until no model is loading: a model loading at start (the daemon loads every kind
        it serves) takes the cores from what is measured."""
        deadline = time.time() + timeout
        while self.call("status", {}).get("loading"):
            if time.time() > deadline:
                sys.exit("the daemon's models never finished loading")
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """One JSON-RPC connection to the daemon."""

    def __init__(self, socket_path, log_name):
        s = socket.socket(socket.AF_UNIX)
        s.connect(socket_path)
        self.conn, self.reader, self.log_name, self.next_id = s, s.makefile("rb"), log_name, 0

    def call(self, method, params, on_piece=None):
        self.next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id})
        self.conn.sendall(line.encode() + b"\n")
        while True:
            msg = json.loads(self.reader.readline())
            if msg.get("method") == "generate.piece":
                if on_piece:
                    on_piece(msg["params"]["text"])
                continue
            if "error" in msg:
                sys.exit(f"daemon answered {method} with an error: {msg['error']}\nlog: {self.log_name}")
            return msg["result"]


def time_first(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------- what each engine runs ----------

class DaemonGenerator:
    def __init__(self, daemon):
        self.d = daemon

    def run(self, prompt, max_new, raw=False):
        """(new tokens, seconds, seconds to the first streamed piece)"""
        first = []
        t = time.perf_counter()
        result = self.d.call("generate_stream", {"prompt": prompt, "max_new_tokens": max_new, "raw": raw},
                             on_piece=lambda _: first or first.append(time.perf_counter() - t))
        return len(result["token_ids"]), time.perf_counter() - t, first[0] if first else float("nan")


class OrtGenerator:
    """Python onnxruntime's own greedy loop (numpy), 2 intra-op threads, default options."""

    def __init__(self, folder, config, tokenizer):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.names = [o.name for o in self.sess.get_outputs()]
        self.config, self.tok = config, tokenizer

    def run(self, prompt, max_new, raw=False):
        c = self.config
        text = prompt if raw else chat_text(prompt)
        feed = self.tok.encode(text, add_special_tokens=False).ids
        past = {f"past_key_values.{i}.{k}": np.zeros((1, c["num_key_value_heads"], 0, c["head_dim"]), np.float32)
                for i in range(c["num_hidden_layers"]) for k in ("key", "value")}
        done, n, first = 0, 0, float("nan")
        t = time.perf_counter()
        while n < max_new:
            inputs = {"input_ids": np.array([feed], np.int64),
                      "attention_mask": np.ones((1, done + len(feed)), np.int64), **past}
            if "position_ids" in self.inputs:
                inputs["position_ids"] = np.arange(done, done + len(feed), dtype=np.int64)[None, :]
            out = dict(zip(self.names, self.sess.run(None, inputs)))
            for key in past:
                past[key] = out[key.replace("past_key_values", "present")]
            done += len(feed)
            token = int(np.argmax(out["logits"][0, -1]))
            if n == 0:
                first = time.perf_counter() - t
            if token == c["eos_token_id"]:
                break
            n += 1
            feed = [token]
        return n, time.perf_counter() - t, first


class LlamaCppGenerator:
    """llama.cpp through llama-cpp-python, greedy (top_k = 1), 2 threads; `llm`: a Llama to use
    instead of one of its own; `ignore_eos`: always `max_new` tokens."""

    def __init__(self, gguf, llm=None, ignore_eos=False):
        from llama_cpp import Llama
        self.llm = llm or Llama(model_path=gguf, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=2048, verbose=False)
        self.eos = None if ignore_eos else self.llm.token_eos()

    def run(self, prompt, max_new, raw=False):
        text = prompt if raw else chat_text(prompt)
        tokens = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        self.llm.reset()
        n, first = 0, float("nan")
        t = time.perf_counter()
        for token in self.llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if n == 0:
                first = time.perf_counter() - t
            if token == self.eos:
                break
            n += 1
            if n >= max_new:
                break
        return n, time.perf_counter() - t, first


QUIET_LLAMA_LOG = None


class LlamaBatch:
    """llama.cpp's low-level API with one context for up to `sequences` sequences of at most
    `per_sequence` positions each (2 threads, 512-token batches), the way llama-server batches."""

    def __init__(self, gguf, sequences, per_sequence=512):
        import llama_cpp as L

        global QUIET_LLAMA_LOG
        # Its loader logs every tensor. llama.cpp keeps the callback for the process's life, so
        # Python must keep it alive too.
        QUIET_LLAMA_LOG = QUIET_LLAMA_LOG or L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(QUIET_LLAMA_LOG, None)
        L.llama_backend_init()
        self.L = L
        self.model = L.llama_model_load_from_file(gguf.encode(), L.llama_model_default_params())
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = sequences * per_sequence, 512, 512, sequences
        params.n_threads = params.n_threads_batch = THREADS
        self.ctx = L.llama_init_from_model(self.model, params)
        self.batch = L.llama_batch_init(512, 0, sequences)

    def decode(self, items):
        """items: (token, position, sequence, wants logits), at most 512"""
        batch = self.batch
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        if self.L.llama_decode(self.ctx, batch) != 0:
            sys.exit("llama_decode failed in the batching anchor")

    def argmax(self, i):
        """The greedy token of the i-th item of the last decode (which asked for its logits)."""
        return int(np.argmax(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))))

    def clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def close(self):
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def llama_batch_steps(gguf, rows_list, pasts):
    """llama.cpp's own batching on the same machine: milliseconds per llama_decode of one new token
    for each of `rows` sequences that are `past` positions long (one unified KV cache, 2 threads),
    for every (rows, past); the anchor beside the fused model's ceiling."""
    llama = LlamaBatch(gguf, max(rows_list))
    decode = llama.decode
    out = {}
    for past in pasts:
        for rows in rows_list:
            llama.clear()
            for seq in range(rows):
                decode([(100 + j % 50, j, seq, int(j == past - 1)) for j in range(past)])
            pos = past

            def step():
                nonlocal pos
                decode([(200 + seq, pos, seq, 1) for seq in range(rows)])
                pos += 1

            for _ in range(3):
                step()
            rounds = []
            for _ in range(PASSES):
                t = time.perf_counter()
                for _ in range(20):
                    step()
                rounds.append((time.perf_counter() - t) / 20 * 1e3)
            out[(rows, past)] = min(rounds)
    llama.close()
    return out


SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_text(prompt):
    return render_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])


def render_chat(messages):
    """SmolLM2's chat template (the model folder's chat_template.jinja) for messages that open with
    a system turn, the assistant's turn opened."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def best_of(passes, run):
    """The fastest of `passes` runs of `run` (which returns (work done, seconds, extra)): this
    machine's neighbours make single runs vary by 10-20%, and every engine gets the same treatment."""
    return min((run() for _ in range(passes)), key=lambda r: r[1] / max(r[0], 1))


def generation_figures(engine, prompts):
    engine.run(prompts[0], 4)  # warm-up

    def short_pass():
        results = [engine.run(p, SHORT) for p in prompts]
        return sum(r[0] for r in results), sum(r[1] for r in results), statistics.median(r[2] for r in results)

    tokens, seconds, first = best_of(PASSES, short_pass)
    n, s, _ = best_of(PASSES, lambda: engine.run(LONG_PROMPT, LONG, raw=True))
    return {"tokens_per_s_48": tokens / seconds, "tokens_per_s_512": n / s, "tokens_512": n,
            "first_token_ms": 1e3 * first}


class OrtEmbedder:
    """Python onnxruntime on MiniLM: tokenize, pad each batch to its longest text, mean-pool."""

    def __init__(self, folder):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        self.sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.enable_padding()

    def embed(self, texts):
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        hidden = self.sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                      "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


class FastEmbedder:
    def __init__(self, folder):
        from fastembed import TextEmbedding
        self.model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=folder,
                                   threads=THREADS, local_files_only=True)

    def embed(self, texts):
        return list(self.model.embed(texts, batch_size=32))


class DaemonEmbedder:
    def __init__(self, daemon):
        self.d = daemon

    def embed(self, texts):
        return self.d.call("embed", {"texts": texts})["embeddings"]


class DaemonBase64Embedder:
    """`embed` with `encoding_format: "base64"`: the same float32 bits, decoded into numpy arrays
    as the in-process engine returns them, with no float parsing."""

    def __init__(self, daemon):
        self.d = daemon

    def embed(self, texts):
        vectors = self.d.call("embed", {"texts": texts, "encoding_format": "base64"})["embeddings"]
        return [np.frombuffer(base64.b64decode(v), "<f4") for v in vectors]


def embedding_figures(engine, batched, single):
    engine.embed(single[:4])

    def timed(batches):
        t = time.perf_counter()
        for b in batches:
            engine.embed(b)
        return sum(len(b) for b in batches), time.perf_counter() - t, None

    n, s, _ = best_of(PASSES, lambda: timed([batched[i:i + 32] for i in range(0, len(batched), 32)]))
    n1, s1, _ = best_of(PASSES, lambda: timed([[t] for t in single]))
    return {"embeddings_per_s_batched": n / s, "embeddings_per_s_single": n1 / s1}


def single_text_latency(engines, texts, rounds=6):
    """One text per request, uncached, each of `engines` ((name, embedder) pairs: daemons through
    their sockets, a kept-open connection each, the answer decoded: JSON numbers, or base64 into
    numpy arrays; Python onnxruntime in process: tokenize, run, pool) taking turns in rounds (each
    round in another order) so that all see the same machine; p50 and p99 of each."""
    for _, engine in engines:
        engine.embed([texts[0]])
    per = len(texts) // rounds
    lat = {name: [] for name, _ in engines}
    for r in range(rounds):
        chunk = texts[r * per:(r + 1) * per]
        turn = r % len(engines)
        for name, engine in engines[turn:] + engines[:turn]:
            for t in chunk:
                lat[name].append(time_first(lambda: engine.embed([t])))
    figures = {}
    for name, values in lat.items():
        figures[f"one_text_embed_{name}_p50_ms"] = 1e3 * percentile(values, 50)
        figures[f"one_text_embed_{name}_p99_ms"] = 1e3 * percentile(values, 99)
    return figures


def one_text_embed(args, emb_dir, uncached, note):
    """make bench's one-text embed section: one daemon (base64 and JSON answers), Python
    onnxruntime on the export and on the graph the daemon runs (tools/fused-encoder), in turns."""
    print("one text per request, uncached: steadytextd (socket) and Python onnxruntime (in process) on the export "
          "and on the graph steadytextd runs (its attention fused: tools/fused-encoder), in turns", flush=True)
    if not args.fused_encoder:
        sys.exit("--fused-encoder is needed for the one-text embed comparison (bench/run.sh passes it)")
    d = Daemon(args.bin, uncached)
    d.connect()
    d.settle()
    latency = single_text_latency([
        ("daemon", DaemonEmbedder(d)), ("daemon_base64", DaemonBase64Embedder(d)), ("ort", OrtEmbedder(emb_dir)),
        ("ort_fused", OrtEmbedder(args.fused_encoder)),
    ], sentences(600, 3))
    note("one-text embed", latency)
    d.stop()


def one_text_ratios(r):
    """The one-text section's ratios (>= 1: the daemon as fast as Python in process)."""
    return {f"one-text embed {q}: python {python} / {daemon} (>= 1: daemon as fast)":
            r[f"one_text_embed_{python}_{q}_ms"] / r[f"one_text_embed_{daemon}_{q}_ms"]
            for python, daemon in (("ort", "daemon_base64"), ("ort", "daemon"), ("ort_fused", "daemon_base64"))
            for q in ("p50", "p99")}


def print_ratios(ratios):
    print("| ratio | value |\n|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")


def constraint_figures(daemon):
    """Structured output's cost: one raw counting prompt run free and held to a regex its answer
    already matches (the same tokens, so the difference is the per-token mask), best of three."""
    free = {"prompt": "1, 2, 3, 4,", "raw": True, "max_new_tokens": 256}

    def rate(params):
        def once():
            t = time.perf_counter()
            result = daemon.call("generate", params)
            return len(result["token_ids"]) / (time.perf_counter() - t), result["text"]
        runs = [once() for _ in range(3)]
        return max(r for r, _ in runs), runs[0][1]

    free_rate, free_text = rate(free)
    held_rate, held_text = rate({**free, "regex": "[0-9, ]{1,4000}"})
    if held_text != free_text:
        sys.exit("the constrained counting answer differs from the free one: the mask figure would compare "
                 "different work")
    return {"free_tokens_per_s_256": free_rate, "regex_tokens_per_s_256": held_rate,
            "regex_mask_ms_per_token": 1e3 * (1 / held_rate - 1 / free_rate)}


def tool_folder(model_dir, into):
    """`model_dir` as a folder whose chat template takes tools (tests/tools/chatml_tools.jinja, the
    tool tests' ChatML template; SmolLM2 shares Qwen's ChatML tokens): links to its files."""
    folder = os.path.join(into, os.path.basename(model_dir.rstrip("/")) + "-tools")
    os.makedirs(folder)
    for name in os.listdir(model_dir):
        if name != "chat_template.jinja":
            os.symlink(os.path.join(os.path.abspath(model_dir), name), os.path.join(folder, name))
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "..", "tests", "tools", "chatml_tools.jinja"),
                os.path.join(folder, "chat_template.jinja"))
    return folder


TOOLS = [{"name": "get_weather", "description": "Get the current weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}},
         {"name": "add", "description": "Add two numbers", "parameters": {
             "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
             "required": ["a", "b"]}}]


def tool_call_figures(daemon):
    """Tool calling's cost per token: one conversation offering two tools, answered with a call held
    to the tools' grammar from its first token (`required`) and as free text (`none`: the same
    prompt, nothing held). Decode time per token after the first streamed piece (prefill left
    out), best of three."""
    base = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": TOOLS,
            "max_new_tokens": 96}

    def per_token(params):
        def once():
            first = []
            t = time.perf_counter()
            result = daemon.call("generate_stream", params,
                                 on_piece=lambda _: first or first.append(time.perf_counter()))
            end = time.perf_counter()
            tokens = len(result["token_ids"])
            return (end - first[0]) / max(tokens - 1, 1), tokens
        runs = [once() for _ in range(3)]
        return min(r for r, _ in runs), runs[0][1]

    held, held_tokens = per_token({**base, "tool_choice": "required"})
    free, free_tokens = per_token({**base, "tool_choice": "none"})
    return {"tool_call_ms_per_token": 1e3 * held, "tool_call_tokens": held_tokens,
            "free_text_ms_per_token": 1e3 * free, "free_text_tokens": free_tokens,
            "tool_call_mask_ms_per_token": 1e3 * (held - free)}


# Concurrent clients of the continuous-batching figures and the requests each pass runs: short
# answers (prefill is a large share of the work), then long ones (decode dominates).
SHORT_PASSES = {1: 64, 2: 32, 4: 64, 8: 128, 16: 320}
LONG_PASSES = {1: 16, 8: 16, 16: 16}
# The passes run in rounds (each round every number of clients in turn, on a share of the
# requests): this machine's throughput moves by up to +-20% over minutes, and a ratio of two
# passes run minutes apart moved with it (the same engine's 16-client speedup read 2.15x and
# 3.08x in one session's ad hoc runs). A share is at least the number of clients, so a pass keeps every client busy.
ROUNDS = 3


def concurrency_requests(prompts, count, new_tokens):
    """`count` distinct requests: the reference prompts in variations, greedy and seeded sampling,
    `new_tokens(i)` new tokens at most (some end earlier, at the end token)."""
    requests = []
    for i in range(count):
        params = {"prompt": f"{prompts[i % len(prompts)]} (answer number {i // len(prompts) + 1})",
                  "max_new_tokens": new_tokens(i), "seed": i}
        if i % 2:
            params.update({"temperature": 0.8, "top_p": 0.95})
        requests.append(params)
    return requests


def concurrency_figures(daemon, requests, passes, label, note, name="steadytextd fused"):
    """Aggregate tokens/s, time per output token, first-piece latency for each number of
    concurrent clients in `passes` (clients: requests in all; each client on its own connection,
    streaming, cache off; the requests in flight at once are distinct, since identical ones are
    computed once), in ROUNDS rounds that each run every number of clients in turn on a share of
    the requests. A row's aggregate is the median of its rounds', its speedup the median of its
    rounds' ratios to the same round's single stream, its latencies percentiles over all its
    requests. Every answer of a concurrent pass is compared with the same request's answer alone
    (the 1-client passes, which together run every request). Returns the table rows."""
    import threading

    Client(daemon.socket_path, daemon.log.name).call("generate", {"prompt": "warm up", "max_new_tokens": 4})
    records = {clients: [] for clients in passes}
    rates = {clients: [] for clients in passes}
    for round_ in range(ROUNDS):
        for clients, total in passes.items():
            share = max(clients, -(-total // ROUNDS))
            lock = threading.Lock()
            done = []

            def worker(first):
                c = Client(daemon.socket_path, daemon.log.name)
                for n in range(round_ * share + first, (round_ + 1) * share, clients):
                    index = (n * 7) % len(requests)
                    firsts = []
                    t = time.perf_counter()
                    result = c.call("generate_stream", requests[index],
                                    on_piece=lambda _: firsts or firsts.append(time.perf_counter()))
                    end = time.perf_counter()
                    with lock:
                        done.append((index, result, t, firsts[0] if firsts else end, end))

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            start = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rates[clients].append(sum(len(r[1]["token_ids"]) for r in done) / (time.perf_counter() - start))
            records[clients] += done
    alone = {}
    for index, result, *_ in records[1]:
        alone.setdefault(index, (result["text"], result["token_ids"]))
    table = []
    for clients in passes:
        per_token = [(done - first) / (len(r["token_ids"]) - 1)
                     for _, r, _, first, done in records[clients] if len(r["token_ids"]) > 1]
        first_ms = [1e3 * (first - t) for _, _, t, first, _ in records[clients]]
        checked = differing = 0
        if clients > 1:
            for index, result, *_ in records[clients]:
                checked += 1
                differing += (result["text"], result["token_ids"]) != alone[index]
        row = {"answers": label, "clients": clients, "requests": len(records[clients]),
               "tokens_per_s": statistics.median(rates[clients]),
               "speedup": statistics.median(r / one for r, one in zip(rates[clients], rates[1])),
               "tpot_p50_ms": 1e3 * percentile(per_token, 50), "tpot_p99_ms": 1e3 * percentile(per_token, 99),
               "first_piece_p50_ms": percentile(first_ms, 50), "first_piece_p99_ms": percentile(first_ms, 99),
               "checked": checked, "differing": differing}
        table.append(row)
        note(f"{name}, {label} answers, {clients} clients",
             {k: v for k, v in row.items() if k not in ("clients", "answers")})
    return table


def print_concurrency(concurrency):
    print("| answers | clients | aggregate tokens/s | speedup | time per token p50 / p99 ms | first piece p50 / p99 ms | answers checked / differing |")
    print("|---|---|---|---|---|---|---|")
    for r in concurrency:
        print(f"| {r['answers']} | {r['clients']} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} "
              f"| {r['first_piece_p50_ms']:.0f} / {r['first_piece_p99_ms']:.0f} | {r['checked']} / {r['differing']} |")


def print_ceiling(ceiling):
    """The cost of one decode call for 1..16 rows outside the daemon (bench/ceiling.py; llama.cpp's
    under "llama_cpp" when measured) and the speedup over one stream it allows at most:
    rows x (one row's ms) / (these rows' ms)."""
    pasts = ceiling["pasts"]
    print(f"One decode call for n rows (ms, and at most n x one row's speed), fused model in Python onnxruntime "
          f"{ceiling['onnxruntime']}, {ceiling['threads']} threads" + (", and llama.cpp on the Q4_1 GGUF" if "llama_cpp" in ceiling else ""))
    kernel = ceiling.get("int4_kernel")
    heads = ["MatMulNBits alone"] + ([f"our int4 x int8 kernel ({kernel['isa']})"] if kernel else [])
    heads += [f"step, {p} positions" for p in pasts]
    if "llama_cpp" in ceiling:
        heads += [f"llama.cpp step, {p} positions" for p in pasts]
    print("| rows | " + " | ".join(f"{h} | at most" for h in heads) + " |")
    print("|---|" + "---|---|" * len(heads))
    for i, r in enumerate(ceiling["table"]):
        cells = [(r["matmulnbits_ms"], r["matmulnbits_ceiling"])]
        if kernel:
            ms = kernel["table"][i]["ms"]
            cells.append((ms, r["rows"] * kernel["table"][0]["ms"] / ms))
        cells += [(r[f"step_ms_past_{p}"], r[f"step_ceiling_past_{p}"]) for p in pasts]
        if "llama_cpp" in ceiling:
            cells += [(ceiling["llama_cpp"][i][f"step_ms_past_{p}"], ceiling["llama_cpp"][i][f"step_ceiling_past_{p}"])
                      for p in pasts]
        print(f"| {r['rows']} | " + " | ".join(f"{ms:.2f} | {most:.2f}x" for ms, most in cells) + " |")
    print_attention(ceiling)


def print_attention(ceiling):
    """The attention layers of one decode step alone: ONNX Runtime's GroupQueryAttention
    (bench/ceiling.py) beside ours (benches/kernels.rs), ms per step."""
    theirs, ours = ceiling.get("attention"), ceiling.get("attention_kernel")
    if not theirs or not ours:
        return
    print()
    print(f"Attention of one decode step alone ({theirs['layers']} layers, {theirs['heads']} query heads on "
          f"{theirs['kv_heads']} KV heads of {theirs['head_dim']}), ms per step")
    pasts = ceiling["pasts"]
    heads = [f"{who}, {p} positions" for p in pasts for who in ("GroupQueryAttention", f"ours ({ours['isa']})")]
    print("| rows | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for t, o in zip(theirs["table"], ours["table"]):
        cells = [f"{r[f'ms_past_{p}']:.2f}" for p in pasts for r in (t, o)]
        print(f"| {t['rows']} | " + " | ".join(cells) + " |")


# ---------- the prefix cache ----------

# The [cache] line that turns the prefix cache on and off in the prefix section's daemons (their
# result cache is off). A daemon that predates the prefix cache rejects the key: run it with ""
# for both, and the two columns measure the same thing.
PREFIX_CACHE = {"on": "prefix_mb = 512\n", "off": "prefix_mb = 0\n"}
# The conversations: turns, new tokens of each answer; words of each user message of the "long
# turns" one (~215 tokens: the history is ~2,000 tokens by the last turn) and of the "agent" one,
# which opens with a long system turn (instructions and six tool definitions, ~2,200 tokens, as
# an agent sends) and then has short turns (~40 tokens).
TURNS, TURN_NEW = 8, 24
TURN_WORDS = {"long turns": 190, "agent": 30}
AGENT_TOOLS = 6
RERANK_DOCUMENTS = 20
# Prefill lengths; the last is the fused model's context (8,192) less room for the new token.
PREFILL_SIZES = (512, 2048, 8000)


def prefix_daemon(args, cache):
    """steadytextd on the fused model, result cache off, prefix cache `cache` ("on" or "off"),
    its models loaded and one generation run."""
    d = Daemon(args.bin, f"generation_model = {json.dumps(args.fused)}\n"
               f"[cache]\ngeneration_capacity = 0\n{PREFIX_CACHE[cache]}")
    d.connect()
    d.settle()
    return d


def conversation(nonce, shape):
    """The conversation `shape` ("long turns" or "agent"): its system turn and user messages,
    deterministic text; the nonce opens the system turn, so that nothing cached by an earlier
    run holds any of it."""
    users = [" ".join(" ".join(sentences(12, 100 + turn)).split()[:TURN_WORDS[shape]]) + "\nWhat does that mean?"
             for turn in range(TURNS)]
    system = f"Conversation {nonce}. {SYSTEM}"
    if shape == "agent":
        tools = [{"type": "function", "function": {
            "name": f"tool_{i}", "description": " ".join(sentences(3, 300 + i)),
            "parameters": {"type": "object", "properties": {
                word: {"type": "string", "description": sentence}
                for word, sentence in zip(("query", "target", "mode"), sentences(3, 400 + i))}}}}
            for i in range(AGENT_TOOLS)]
        system += "\nYou can call these tools:\n" + "\n".join(json.dumps(t) for t in tools)
    return system, users


def chat_latencies(label, turn, system, users):
    """Runs the conversation through `turn(messages)` -> (answer, figures): each turn's messages
    are the history (the earlier answers as this engine gave them) and the next user message.
    Returns each turn's figures and answers."""
    messages, rows, answers = [{"role": "system", "content": system}], [], []
    for user in users:
        messages.append({"role": "user", "content": user})
        answer, figures = turn(messages)
        messages.append({"role": "assistant", "content": answer})
        rows.append(figures)
        answers.append(answer)
        print(f"  {label} turn {len(rows)}: " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()), flush=True)
    return rows, answers


def daemon_turn(daemon):
    """A streamed, greedy chat turn on the daemon: (answer, {prompt tokens, of them reused from the
    prefix cache, ms to the first piece})."""
    def turn(messages):
        first = []
        t = time.perf_counter()
        result = daemon.call("generate_stream", {"messages": messages, "max_new_tokens": TURN_NEW},
                             on_piece=lambda _: first or first.append(time.perf_counter() - t))
        if result["cached"]:
            sys.exit("a conversation turn came from the result cache: its latency would measure no prefill")
        return result["text"], {"prompt_tokens": result["prompt_tokens"], "reused": result.get("prefix_tokens", 0),
                                "first_ms": 1e3 * first[0] if first else float("nan")}
    return turn


class LlamaCppSession:
    """llama.cpp as llama-server serves a chat: one Llama kept across requests (2 threads, 512-token
    batches, the fused model's 8,192-token context, flash attention on as llama-server's default
    "auto" has it on CPUs; llama-cpp-python's default, off, prefills 2,048 tokens at less than half
    the speed here). Its Llama.generate (llama_cpp/llama.py) keeps the KV of the longest token
    prefix a prompt shares with what it evaluated before (it drops the rest with kv_cache_seq_rm)
    and evaluates only the remainder: its prompt cache."""

    def __init__(self, gguf, n_ctx=8192):
        from llama_cpp import Llama
        self.llm = Llama(model_path=gguf, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=n_ctx, n_batch=512,
                         n_ubatch=512, flash_attn=True, verbose=False)

    def turn(self, messages):
        """A greedy chat turn: (answer, {prompt tokens, of them kept from the last request, ms to
        the first token})."""
        llm = self.llm
        t = time.perf_counter()
        tokens = llm.tokenize(render_chat(messages).encode(), add_bos=False, special=True)
        held = llm.input_ids[:llm.n_tokens].tolist()
        reused = next((i for i, (a, b) in enumerate(zip(held, tokens)) if a != b), min(len(held), len(tokens)))
        answer, first = [], None
        for token in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            first = first or time.perf_counter() - t
            if token == llm.token_eos():
                break
            answer.append(token)
            if len(answer) == TURN_NEW:
                break
        return llm.detokenize(answer).decode(errors="replace"), {
            "prompt_tokens": len(tokens), "reused": reused, "first_ms": 1e3 * first}

    def prefill_seconds(self, ids):
        """Seconds to evaluate `ids` from an empty context (Llama.eval, in 512-token batches)."""
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t


def rerank_seconds(daemons, model, documents, nonce):
    """{name: the fastest of PASSES reranks of `documents`} by the generation model's yes/no
    judgements on each of `daemons` ({name: Daemon}; `model` is the model's name, so that a
    configured cross-encoder is not used). The daemons take turns within each pass, in the other
    order every other pass, so that all of them see the same machine; each rerank has a new
    query, so that no judgement comes from the result cache."""
    times = {name: [] for name in daemons}
    for p in range(PASSES):
        for name in (list(daemons) if p % 2 == 0 else list(reversed(daemons))):
            query = f"({nonce}-{name}-{p}) Why does the model answer every question with the same bytes?"
            t = time.perf_counter()
            result = daemons[name].call("rerank", {"query": query, "documents": documents, "model": model})
            times[name].append(time.perf_counter() - t)
            if result["cached"]:
                sys.exit("a rerank judgement came from the result cache")
    return {name: min(t) for name, t in times.items()}


def prefill_prompts(tokenizer, sizes=PREFILL_SIZES):
    """(length, text, its token ids) for each of `sizes`: deterministic sentences cut to that
    many tokens and decoded (another text for each length, none a prefix of another)."""
    prompts = []
    for i, n in enumerate(sizes):
        ids = tokenizer.encode(" ".join(sentences(n // 8, 20 + i)), add_special_tokens=False).ids
        if len(ids) < n:
            sys.exit(f"the prefill text for {n} tokens is only {len(ids)} tokens")
        text = tokenizer.decode(ids[:n])
        prompts.append((n, text, tokenizer.encode(text, add_special_tokens=False).ids))
    return prompts


def daemon_prefill(daemon, prompts):
    """{length: (prompt tokens the daemon counted, seconds)}: one raw request of each prompt for one
    new token (its prefill and one step), measured once."""
    daemon.call("generate", {"prompt": "1, 2, 3, 4,", "raw": True, "max_new_tokens": 1})
    out = {}
    for n, text, _ in prompts:
        t = time.perf_counter()
        result = daemon.call("generate", {"prompt": text, "raw": True, "max_new_tokens": 1})
        out[n] = (result["prompt_tokens"], time.perf_counter() - t)
        print(f"  steadytextd prefill {n}: {result['prompt_tokens']} tokens, {out[n][1]:.1f} s", flush=True)
    return out


def prefix_figures(args):
    """The prefix cache's section: first-token latency of each turn of an 8-turn conversation and
    one 20-document rerank by the generation model, steadytextd (fused model) with the prefix
    cache on and off, llama.cpp with its prompt cache beside them; and prefill tokens/s of
    steadytextd (prefix cache off) and llama.cpp at three prompt lengths."""
    nonce = f"{random.SystemRandom().randrange(10 ** 8):08d}"
    shapes = {shape: conversation(nonce, shape) for shape in TURN_WORDS}
    documents = sentences(RERANK_DOCUMENTS, 7)
    prompts = prefill_prompts(Tokenizer.from_file(os.path.join(args.fused, "tokenizer.json")))
    turns, answers, daemons = {}, {}, {}
    for cache in ("off", "on"):
        print(f"steadytextd, fused model, prefix cache {cache} ({PREFIX_CACHE[cache].strip() or 'not configured'}), "
              "result cache off", flush=True)
        d = daemons[cache] = prefix_daemon(args, cache)
        model = d.call("generate", {"prompt": f"warm up {nonce}", "max_new_tokens": 4})["model"]
        for shape, (system, users) in shapes.items():
            turns[shape, cache], answers[shape, cache] = chat_latencies(f"{shape}, {cache}", daemon_turn(d), system, users)
        if cache == "off":
            daemon_prefill_s = daemon_prefill(d, prompts)
    rerank = rerank_seconds(daemons, model, documents, nonce)
    for cache, d in daemons.items():
        print(f"  {cache} rerank of {RERANK_DOCUMENTS} documents: {1e3 * rerank[cache]:.0f} ms", flush=True)
        d.stop()
    llama_prefill_s = {}
    if args.gguf:
        print("llama.cpp (llama-cpp-python), one Llama kept across requests (its prompt cache)", flush=True)
        llama = LlamaCppSession(args.gguf)
        llama.turn([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "warm up"}])
        for shape, (system, users) in shapes.items():
            turns[shape, "llama.cpp"], _ = chat_latencies(f"{shape}, llama.cpp", llama.turn, system, users)
        llama.prefill_seconds(prompts[0][2][:64])
        llama_prefill_s = {n: llama.prefill_seconds(ids) for n, _, ids in prompts}
    conversations = {}
    for shape in shapes:
        if answers[shape, "on"] != answers[shape, "off"]:
            sys.exit(f"the {shape} conversation's answers differ with the prefix cache on and off: "
                     + json.dumps({"on": answers[shape, "on"], "off": answers[shape, "off"]}))
        table = []
        for i in range(TURNS):
            on, off = turns[shape, "on"][i], turns[shape, "off"][i]
            row = {"turn": i + 1, "prompt_tokens": off["prompt_tokens"], "reused_on": on["reused"],
                   "reused_off": off["reused"], "first_ms_on": on["first_ms"], "first_ms_off": off["first_ms"],
                   "speedup": off["first_ms"] / on["first_ms"]}
            if (shape, "llama.cpp") in turns:
                lc = turns[shape, "llama.cpp"][i]
                row.update({"first_ms_llama_cpp": lc["first_ms"], "llama_cpp_prompt_tokens": lc["prompt_tokens"],
                            "llama_cpp_reused": lc["reused"]})
            table.append(row)
        # What the speedup would be if a prompt's first token cost its prefilled tokens only: the
        # most reuse can give this shape (a turn of n new tokens after h reused is at best (h + n) / n).
        bound = statistics.mean(r["prompt_tokens"] / (r["prompt_tokens"] - r["reused_on"]) for r in table[1:])
        conversations[shape] = {"turns": table, "speedup_turns_2_8": statistics.mean(r["speedup"] for r in table[1:]),
                                "token_bound_turns_2_8": bound}
    prefill = []
    for n, _, ids in prompts:
        counted, seconds = daemon_prefill_s[n]
        row = {"tokens": n, "daemon_prompt_tokens": counted, "steadytextd_tokens_per_s": counted / seconds}
        if n in llama_prefill_s:
            row.update({"llama_cpp_tokens": len(ids), "llama_cpp_tokens_per_s": len(ids) / llama_prefill_s[n]})
            row["ratio"] = row["steadytextd_tokens_per_s"] / row["llama_cpp_tokens_per_s"]
        prefill.append(row)
    return {"prefix_cache": PREFIX_CACHE, "new_tokens_per_turn": TURN_NEW, "conversations": conversations,
            "answers_equal_on_off": True,
            "rerank": {"documents": RERANK_DOCUMENTS, "ms_on": 1e3 * rerank["on"], "ms_off": 1e3 * rerank["off"],
                       "speedup": rerank["off"] / rerank["on"]},
            "prefill": prefill}


def print_prefix(prefix):
    def cell(row, key, spec):
        return format(row[key], spec) if key in row else "-"

    for shape, conversation_figures in prefix["conversations"].items():
        print(f"8-turn conversation ({shape}), ms to the first piece (token), greedy, {prefix['new_tokens_per_turn']} "
              f"new tokens a turn; steadytextd fused, prefix cache on "
              f"({prefix['prefix_cache']['on'].strip() or 'not configured'}) and off "
              f"({prefix['prefix_cache']['off'].strip() or 'not configured'}), result cache off")
        print("| turn | prompt tokens | reused on / off | on ms | off ms | speedup on/off | llama.cpp ms | llama.cpp reused / prompt tokens |")
        print("|---|---|---|---|---|---|---|---|")
        for r in conversation_figures["turns"]:
            print(f"| {r['turn']} | {r['prompt_tokens']} | {r['reused_on']} / {r['reused_off']} | {r['first_ms_on']:.0f} "
                  f"| {r['first_ms_off']:.0f} | {r['speedup']:.2f}x | {cell(r, 'first_ms_llama_cpp', '.0f')} "
                  f"| {cell(r, 'llama_cpp_reused', 'd')} / {cell(r, 'llama_cpp_prompt_tokens', 'd')} |")
        print(f"\nMean speedup on/off ({shape}), turns 2-{len(conversation_figures['turns'])}: "
              f"{conversation_figures['speedup_turns_2_8']:.2f}x (goal >= 5x; prompt tokens / tokens prefilled with "
              f"the cache, the most reuse can give this shape: {conversation_figures['token_bound_turns_2_8']:.2f}x)\n")
    r = prefix["rerank"]
    print(f"| rerank of {r['documents']} documents by the generation model, best of {PASSES}, on and off taking turns "
          "| on ms | off ms | speedup on/off |")
    print("|---|---|---|---|")
    print(f"| steadytextd fused (goal >= 2x) | {r['ms_on']:.0f} | {r['ms_off']:.0f} | {r['speedup']:.2f}x |\n")
    print("Prefill of a raw prompt, measured once: steadytextd fused (prefix cache off; one request for one new token) "
          "and llama.cpp on the Q4_1 GGUF (Llama.eval, 512-token batches); "
          f"{PREFILL_SIZES[-1]:,} is the context (8,192) less room for the new token")
    print("| tokens | daemon's prompt tokens | steadytextd tokens/s | llama.cpp tokens/s | steadytextd / llama.cpp |")
    print("|---|---|---|---|---|")
    for r in prefix["prefill"]:
        print(f"| {r['tokens']:,} | {r['daemon_prompt_tokens']} | {r['steadytextd_tokens_per_s']:.0f} "
              f"| {cell(r, 'llama_cpp_tokens_per_s', '.0f')} | {cell(r, 'ratio', '.2f')} |")


def idle_cpu(pid):
    c0 = cpu_seconds(pid)
    time.sleep(IDLE_SECS)
    return 100 * (cpu_seconds(pid) - c0) / IDLE_SECS


# ---------- the run ----------

def machine():
    return {"cpus": os.cpu_count(), "onnxruntime": ort.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder with steadytextd")
    ap.add_argument("--shared", required=True, help="../shared/models")
    ap.add_argument("--fused", required=True, help="the fused model folder (served variant)")
    ap.add_argument("--gguf", help="SmolLM2 Q4_1 GGUF for llama.cpp")
    ap.add_argument("--json", required=True)
    ap.add_argument("--baseline-bin", help="another steadytextd build to compare single-stream speed with")
    ap.add_argument("--only", choices=["concurrency", "prefix", "twin", "embed"], help="run only this section")
    ap.add_argument("--twin", help="tools/twin/build.sh's folder (genai/ and model-q4_0.gguf): the 1B twin section")
    ap.add_argument("--fused-encoder", help="tools/fused-encoder's folder: the graph steadytextd runs, for Python")
    ap.add_argument("--fused-st", help="the fused model folder on our int4 x int8 kernel (tools/fused-decoder)")
    ap.add_argument("--ceiling", help="bench/ceiling.py's JSON, printed beside the concurrency table")
    args = ap.parse_args()
    if args.only == "twin":
        if not args.twin:
            sys.exit("--only twin needs --twin DIR")
        import twin
        figures = twin.twin_figures(args)
        print()
        twin.print_twin(figures)
        json.dump({"machine": machine(), "twin": figures}, open(args.json, "w"), indent=1)
        print(f"\nJSON: {args.json}")
        return
    if args.only == "prefix":
        prefix = prefix_figures(args)
        print()
        print_prefix(prefix)
        json.dump({"machine": machine(), "prefix": prefix}, open(args.json, "w"), indent=1)
        print(f"\nJSON: {args.json}")
        return
    ceiling = json.load(open(args.ceiling)) if args.ceiling else None
    if ceiling and args.gguf:
        print("llama.cpp, sequences decoded in one llama_decode (its batching, beside the fused model's ceiling)",
              flush=True)
        rows_list = [r["rows"] for r in ceiling["table"]]
        steps = llama_batch_steps(args.gguf, rows_list, ceiling["pasts"])
        ceiling["llama_cpp"] = []
        for n in rows_list:
            row = {"rows": n}
            for p in ceiling["pasts"]:
                row[f"step_ms_past_{p}"] = steps[(n, p)]
                row[f"step_ceiling_past_{p}"] = n * steps[(1, p)] / steps[(n, p)]
            ceiling["llama_cpp"].append(row)
    gen_dir = os.path.join(args.shared, "SmolLM2-135M-Instruct")
    emb_dir = os.path.join(args.shared, "all-MiniLM-L6-v2")
    gen_config = json.load(open(os.path.join(gen_dir, "config.json")))
    prompts = [c["prompt"] for c in json.load(open(os.path.join(gen_dir, "reference_ort.json")))["cases"]]
    tokenizer = Tokenizer.from_file(os.path.join(gen_dir, "tokenizer.json"))
    batched, single = sentences(1024, 1), sentences(256, 2)
    rows = {}
    uncached = "[cache]\ngeneration_capacity = 0\nembedding_capacity = 0\n"

    def note(name, figures):
        rows.setdefault(name, {}).update(figures)
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in figures.items()), flush=True)

    if args.only == "embed":
        one_text_embed(args, emb_dir, uncached, note)
        ratios = one_text_ratios(rows["one-text embed"])
        print()
        print_ratios(ratios)
        json.dump({"machine": machine(), "figures": rows, "ratios": ratios}, open(args.json, "w"), indent=1)
        print(f"\nJSON: {args.json}")
        return

    print("steadytextd, fused model, concurrent clients (continuous batching), uncached", flush=True)
    d = Daemon(args.bin, f"generation_model = {json.dumps(args.fused)}\n" + uncached)
    short = concurrency_requests(prompts, 64, lambda i: 24 + (i * 13) % 73)
    # Raw counting prompts run to their limit without an end token. All distinct: the daemon
    # answers identical requests in flight once (the waiting ones get the first one's answer).
    long = [{"prompt": f"{k}, {k + 1}, {k + 2}, {k + 3},", "raw": True, "max_new_tokens": 256, "seed": k,
             **({"temperature": 0.8, "top_p": 0.95} if k % 2 else {})} for k in range(1, 16 * 97, 97)]
    concurrency = (concurrency_figures(d, short, SHORT_PASSES, "24-96 token", note)
                   + concurrency_figures(d, long, LONG_PASSES, "256 token", note))
    d.stop()
    if args.fused_st:
        print("steadytextd, the fused model on our int4 x int8 kernel (fused-st), concurrent clients, uncached", flush=True)
        d = Daemon(args.bin, f"generation_model = {json.dumps(args.fused_st)}\n" + uncached)
        concurrency += concurrency_figures(d, long, LONG_PASSES, "256 token, our int4 kernel", note,
                                           name="steadytextd fused-st")
        d.stop()
    if args.baseline_bin:
        print("steadytextd before continuous batching (--baseline-bin), fused model, 1 client", flush=True)
        d = Daemon(args.baseline_bin, f"generation_model = {json.dumps(args.fused)}\n" + uncached)
        note("baseline fused", generation_figures(DaemonGenerator(d), prompts))
        d.stop()

    if args.only == "concurrency":
        print()
        print_concurrency(concurrency)
        if ceiling:
            print()
            print_ceiling(ceiling)
        return

    print("steadytextd, shared model (HF layout), uncached", flush=True)
    d = Daemon(args.bin, uncached)
    d.connect()
    cold_embed = time_first(lambda: d.call("embed", {"texts": ["cold start"]}))
    note("steadytextd shared", {"cold_start_embed_ms": 1e3 * cold_embed})
    note("steadytextd shared", generation_figures(DaemonGenerator(d), prompts))
    note("steadytextd shared", embedding_figures(DaemonEmbedder(d), batched, single))
    note("steadytextd shared", {"idle_cpu_percent": idle_cpu(d.proc.pid), "peak_rss_mb": peak_rss_mb(d.proc.pid)})
    d.stop()

    one_text_embed(args, emb_dir, uncached, note)

    print("steadytextd, fused model, uncached", flush=True)
    d = Daemon(args.bin, f"generation_model = {json.dumps(args.fused)}\n" + uncached)
    d.connect()
    cold_gen = time_first(lambda: d.call("generate", {"prompt": prompts[0], "max_new_tokens": 1}))
    note("steadytextd fused", {"cold_start_generate_ms": 1e3 * cold_gen})
    note("steadytextd fused", generation_figures(DaemonGenerator(d), prompts))
    note("steadytextd fused", constraint_figures(d))
    note("steadytextd fused", {"idle_cpu_percent": idle_cpu(d.proc.pid), "peak_rss_mb": peak_rss_mb(d.proc.pid)})
    d.stop()

    print("steadytextd, fused model with a tool template, uncached: a held tool call against free text",
          flush=True)
    tools_dir = tempfile.mkdtemp(prefix="steadytext-bench-tools-")
    d = Daemon(args.bin, f"generation_model = {json.dumps(tool_folder(args.fused, tools_dir))}\n" + uncached)
    d.connect()
    note("steadytextd fused tools", tool_call_figures(d))
    d.stop()

    print("steadytextd, shared model, cached answers on a kept-open connection", flush=True)
    d = Daemon(args.bin, "")
    d.connect()
    cold_gen = time_first(lambda: d.call("generate", {"prompt": prompts[0], "max_new_tokens": 1}))
    d.call("generate", {"prompt": prompts[1], "max_new_tokens": SHORT})
    d.call("embed", {"texts": [single[0]]})
    gen_lat, emb_lat = [], []
    for _ in range(2000):
        gen_lat.append(time_first(lambda: d.call("generate", {"prompt": prompts[1], "max_new_tokens": SHORT})))
        emb_lat.append(time_first(lambda: d.call("embed", {"texts": [single[0]]})))
    note("steadytextd shared", {
        "cold_start_generate_ms": 1e3 * cold_gen,
        "cached_generate_p50_ms": 1e3 * percentile(gen_lat, 50), "cached_generate_p99_ms": 1e3 * percentile(gen_lat, 99),
        "cached_embed_p50_ms": 1e3 * percentile(emb_lat, 50), "cached_embed_p99_ms": 1e3 * percentile(emb_lat, 99)})
    d.stop()

    print("Python onnxruntime (in process)", flush=True)
    note("python onnxruntime shared", generation_figures(OrtGenerator(gen_dir, gen_config, tokenizer), prompts))
    note("python onnxruntime shared", embedding_figures(OrtEmbedder(emb_dir), batched, single))
    note("python onnxruntime shared", {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    note("python onnxruntime fused", generation_figures(OrtGenerator(args.fused, gen_config, tokenizer), prompts))
    try:
        note("fastembed", embedding_figures(FastEmbedder(emb_dir), batched, single))
    except Exception as e:  # noqa: BLE001 - an anchor that cannot run is reported, not fatal
        print(f"  fastembed: cannot run offline on the shared model: {e}", flush=True)
    if args.gguf:
        print("llama.cpp (llama-cpp-python)", flush=True)
        note("llama.cpp", generation_figures(LlamaCppGenerator(args.gguf), prompts))
    prefix = prefix_figures(args)
    twin_section = None
    if args.twin:
        import twin
        twin_section = twin.twin_figures(args)

    ratios = {}

    def ratio(name, a, b, key):
        if key in rows.get(a, {}) and key in rows.get(b, {}):
            ratios[name] = rows[a][key] / rows[b][key]

    for key in ("tokens_per_s_48", "tokens_per_s_512"):
        ratio(f"fused daemon / llama.cpp {key}", "steadytextd fused", "llama.cpp", key)
        ratio(f"fused daemon / python ort shared {key}", "steadytextd fused", "python onnxruntime shared", key)
        ratio(f"fused daemon / python ort fused {key}", "steadytextd fused", "python onnxruntime fused", key)
        ratio(f"shared daemon / python ort shared {key}", "steadytextd shared", "python onnxruntime shared", key)
        ratio(f"fused daemon / fused daemon before batching {key}", "steadytextd fused", "baseline fused", key)
    ratios.update(one_text_ratios(rows["one-text embed"]))
    for key in ("embeddings_per_s_batched", "embeddings_per_s_single"):
        ratio(f"daemon / python ort {key}", "steadytextd shared", "python onnxruntime shared", key)
        ratio(f"daemon / fastembed {key}", "steadytextd shared", "fastembed", key)

    keys = sorted({k for r in rows.values() for k in r})
    names = list(rows)
    print()
    print("| figure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in keys:
        cells = [f"{rows[n][k]:.1f}" if isinstance(rows[n].get(k), float) else str(rows[n].get(k, "")) for n in names]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    print_concurrency(concurrency)
    if ceiling:
        print()
        print_ceiling(ceiling)
    print()
    print_prefix(prefix)
    if twin_section:
        print()
        twin.print_twin(twin_section)
    print()
    print_ratios(ratios)
    json.dump({"machine": machine(), "figures": rows, "ratios": ratios, "concurrency": concurrency,
               "ceiling": ceiling, "prefix": prefix, "twin": twin_section}, open(args.json, "w"), indent=1)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
