"""The official `ollama` package, unchanged, against steadytextd's Ollama API.

Usage: OLLAMA_HOST=... OLLAMA_API_KEY=... ollama_client.py GENERATION_MODEL EMBEDDING_MODEL
Configured only by the environment, as a user would. Prints one JSON object of what came back;
tests/compat.rs compares it with stctl's answers.
"""

import json
import os
import sys
import urllib.request

import ollama

generation_model, embedding_model = sys.argv[1:3]
client = ollama.Client()
out = {}
options = {"seed": 7, "num_predict": 24}

# Streamed first (a cache miss: a line per piece), then whole (from the cache).
parts = list(client.generate(model=generation_model, prompt="Name three colors.", options=options, stream=True))
out["generate_stream"] = "".join(p.response for p in parts)
out["generate_stream_lines"] = len(parts)
out["generate_stream_last"] = [parts[-1].done, parts[-1].done_reason, parts[-1].eval_count]
answer = client.generate(model=generation_model, prompt="Name three colors.", options=options, stream=False)
out["generate"] = answer.response
out["generate_done"] = [answer.done, answer.done_reason, answer.eval_count, answer.prompt_eval_count]
out["generate_durations"] = [answer.total_duration, answer.load_duration, answer.prompt_eval_duration,
                             answer.eval_duration]

sampled = client.generate(model=generation_model, prompt="Tell me a word.", stream=False,
                          options={"temperature": 0.8, "seed": 7, "num_predict": 16})
out["sampled"] = sampled.response
raw = client.generate(model=generation_model, prompt="The capital of France is", raw=True, stream=False,
                      options={"num_predict": 12})
out["raw"] = raw.response

messages = [{"role": "user", "content": "Name three colors."}]
chat = client.chat(model=generation_model, messages=messages, options=options)
out["chat"] = chat.message.content
chat_parts = list(client.chat(model=generation_model, messages=messages, options=options, stream=True))
out["chat_stream"] = "".join(p.message.content or "" for p in chat_parts)

schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
          "required": ["color"], "additionalProperties": False}
pick = [{"role": "user", "content": "Pick a color."}]
structured = client.chat(model=generation_model, messages=pick, format=schema, options={"num_predict": 32})
out["structured"] = structured.message.content
structured_parts = list(client.chat(model=generation_model, messages=pick, format=schema,
                                    options={"num_predict": 32}, stream=True))
out["structured_stream"] = "".join(p.message.content or "" for p in structured_parts)

embedded = client.embed(model=embedding_model, input=["first text", "second text"])
out["embed"] = embedded.embeddings
out["embed_one"] = client.embed(model=embedding_model, input="first text").embeddings
out["embeddings"] = client.embeddings(model=embedding_model, prompt="first text").embedding
out["embed_count"] = embedded.prompt_eval_count

out["list"] = sorted((m.model, bool(m.size), len(m.digest or "")) for m in client.list().models)
shown = client.show(generation_model)
out["show"] = [shown.capabilities, shown.details.format]
out["ps"] = sorted(m.model for m in client.ps().models)
loaded = client.generate(model=generation_model, prompt="")
out["load"] = [loaded.done, loaded.done_reason]

request = urllib.request.Request(os.environ["OLLAMA_HOST"] + "/api/version",
                                 headers={"Authorization": "Bearer " + os.environ["OLLAMA_API_KEY"]})
out["version"] = json.load(urllib.request.urlopen(request))["version"]
with urllib.request.urlopen(os.environ["OLLAMA_HOST"] + "/") as running:
    out["running"] = running.read().decode()


def refused(call):
    try:
        call()
    except ollama.ResponseError as e:
        return [e.status_code, e.error]
    return None


out["pull"] = refused(lambda: client.pull("llama3.2"))
out["unknown_model"] = refused(lambda: client.generate(model="no-such-model", prompt="x", stream=False))
out["penalty"] = refused(lambda: client.generate(model=generation_model, prompt="x", stream=False,
                                                 options={"repeat_penalty": 1.3}))
out["think"] = refused(lambda: client.generate(model=generation_model, prompt="x", stream=False, think=True))
out["wrong_kind"] = refused(lambda: client.embed(model=generation_model, input="x"))
out["wrong_key"] = refused(lambda: ollama.Client(headers={"Authorization": "Bearer wrong"}).list())
json.dump(out, sys.stdout)
