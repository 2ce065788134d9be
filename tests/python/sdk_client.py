"""SteadyText's own SDK (steadytext==2025.11.25 from PyPI, unchanged) against steadytextd's
SteadyText listener, configured only by STEADYTEXT_DAEMON_HOST, STEADYTEXT_DAEMON_PORT and
STEADYTEXT_DAEMON_TIMEOUT_MS (and, so that a fallback can never pass for an answer,
STEADYTEXT_ALLOW_MODEL_DOWNLOADS=false with a llama_cpp stub that raises).

Usage: sdk_client.py. Prints one JSON object of what came back; tests/compat.rs compares it
with stctl's answers and the daemon's request log.
"""

import json
import sys

import steadytext

out = {}
out["generate"] = steadytext.generate("Name three colors.", max_new_tokens=24)
answer = steadytext.generate("Name three colors.", max_new_tokens=8, return_logprobs=True)
out["generate_logprobs"] = answer
schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
          "required": ["color"], "additionalProperties": False}
out["generate_schema"] = steadytext.generate("Pick a color.", schema=schema, max_new_tokens=32)
out["generate_choices"] = steadytext.generate("Is the sky blue?", choices=["yes", "no"], max_new_tokens=8)
# A prompt no call has asked before: the stream is made token by token, one ACK each.
out["generate_iter"] = list(steadytext.generate_iter("Name three animals.", max_new_tokens=24))
out["embed"] = [float(x) for x in steadytext.embed("first text")]
out["embed_list"] = [float(x) for x in steadytext.embed(["first text", "second text"], mode="passage")]
documents = ["Photosynthesis turns light into sugar in leaves.", "The train leaves at noon.",
             "Chlorophyll captures sunlight for the plant.", "Bread needs flour and water."]
out["rerank"] = [[d, s] for d, s in steadytext.rerank("How do plants make food?", documents)]
out["rerank_documents"] = steadytext.rerank("How do plants make food?", documents, return_scores=False)
try:
    steadytext.generate("Hi", max_new_tokens=8, unsafe_mode=False, model_repo="a/b", model_filename="c.gguf")
    out["model_repo"] = None
except RuntimeError as e:
    out["model_repo"] = str(e)
json.dump(out, sys.stdout)
