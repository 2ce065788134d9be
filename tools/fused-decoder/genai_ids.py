#!/usr/bin/env python3
"""Greedy ids from onnxruntime-genai, an independent runner of the onnxruntime-genai layout.

usage: genai_ids.py MODEL_FOLDER < cases.json > ids.json
cases.json: [{"input_ids": [...], "max_new_tokens": N}, ...]; prints one list of new ids per
case (the end token excluded), as onnxruntime-genai's own greedy search decides them.
"""

import json
import sys

import onnxruntime_genai as og


def main():
    model = og.Model(sys.argv[1])
    config = json.load(open(f"{sys.argv[1]}/genai_config.json"))
    eos = config["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for case in json.load(sys.stdin):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=1,
                                  max_length=len(case["input_ids"]) + case["max_new_tokens"])
        generator = og.Generator(model, params)
        generator.append_tokens([case["input_ids"]])
        ids = []
        while not generator.is_done() and len(ids) < case["max_new_tokens"]:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos:
                break
            ids.append(token)
        out.append(ids)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
