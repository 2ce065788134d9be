"""Independent log-probabilities: Python onnxruntime runs the shared decoder over a prompt and the
tokens the daemon generated (prefill, then one token per step with the KV cache, as the model
card's contract says) and prints log_softmax of each step's logits (float64) as JSON.

usage: reference.py MODEL_DIR < [{"prompt_ids": [...], "token_ids": [...], "top": N}, ...]
prints: [{"logprobs": [[chosen_logprob, [[id, logprob], ...top N]], ...]}, ...]
"""
import json
import sys

import numpy as np
import onnxruntime as ort

model_dir = sys.argv[1]
config = json.load(open(f"{model_dir}/config.json"))
layers = config["num_hidden_layers"]
kv_heads = config["num_key_value_heads"]
head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(f"{model_dir}/model.onnx", options, providers=["CPUExecutionProvider"])


def log_softmax(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


def run(case):
    past = {}
    for i in range(layers):
        for kind in ("key", "value"):
            past[f"past_key_values.{i}.{kind}"] = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    fed = 0
    steps = []
    feed = list(case["prompt_ids"])
    for chosen in case["token_ids"]:
        ids = np.array([feed], np.int64)
        inputs = {
            "input_ids": ids,
            "attention_mask": np.ones((1, fed + len(feed)), np.int64),
            "position_ids": np.arange(fed, fed + len(feed), dtype=np.int64)[None, :],
            **past,
        }
        outputs = session.run(None, inputs)
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, outputs))
        for i in range(layers):
            for kind in ("key", "value"):
                past[f"past_key_values.{i}.{kind}"] = out[f"present.{i}.{kind}"]
        lp = log_softmax(out["logits"][0, -1])
        top = sorted(range(len(lp)), key=lambda t: (-lp[t], t))[: case["top"]]
        steps.append([float(lp[chosen]), [[t, float(lp[t])] for t in top]])
        fed += len(feed)
        feed = [chosen]
    return {"logprobs": steps}


print(json.dumps([run(c) for c in json.load(sys.stdin)]))
