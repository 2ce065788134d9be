#!/usr/bin/env python3
"""llama.cpp's logits for the twin's logit check (run in the bench venv, which has
llama-cpp-python): every position of each token sequence, fp32 KV cache, flash attention off,
2 threads.

usage: llama_logits.py MODEL.gguf PROMPTS.json OUT.npz   (PROMPTS: a list of token id lists)
"""

import json
import sys

import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama


def main():
    gguf, prompts_path, out = sys.argv[1:4]
    prompts = json.load(open(prompts_path))
    llm = Llama(model_path=gguf, n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=2, n_threads_batch=2,
                logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, verbose=False)
    logits = {}
    for i, ids in enumerate(prompts):
        llm.reset()
        llm.eval(ids)
        logits[f"p{i}"] = np.array(llm.scores[:len(ids)], np.float32)
    np.savez(out, **logits)


if __name__ == "__main__":
    main()
