"""Scores (query, document) pairs with the tiny cross-encoder through Python onnxruntime, each
pair on its own, tokenized by the `tokenizers` package (truncated to the model's 128 positions):
the independent reference of the cross-encoder rerank test.

usage: score.py MODEL_DIR < {"query": q, "documents": [...]}   prints [logit, ...] (float32 values)
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir = sys.argv[1]
config = json.load(open(f"{model_dir}/config.json"))
tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tokenizer.no_padding()
tokenizer.enable_truncation(config["max_position_embeddings"], strategy="longest_first")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(f"{model_dir}/model.onnx", options, providers=["CPUExecutionProvider"])
request = json.load(sys.stdin)
logits = []
for document in request["documents"]:
    e = tokenizer.encode(request["query"], document)
    row = lambda values: np.array([values], np.int64)  # noqa: E731
    out = session.run(["logits"], {"input_ids": row(e.ids), "attention_mask": row(e.attention_mask),
                                   "token_type_ids": row(e.type_ids)})[0]
    logits.append(float(out[0, 0]))
print(json.dumps(logits))
