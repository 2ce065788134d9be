"""The official `openai` package, unchanged, against steadytextd's HTTP front.

Usage: openai_client.py BASE_URL API_KEY GENERATION_MODEL EMBEDDING_MODEL
Prints one JSON object of what came back; tests/http.rs compares it with stctl's answers.
"""

import base64
import json
import struct
import sys
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

base_url, api_key, generation_model, embedding_model = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
out = {}

pieces = []
stream = client.chat.completions.create(
    model=generation_model,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=24,
    stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens]
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
out["chat_stream"] = "".join(pieces)
out["chat_stream_pieces"] = len(pieces)
out["chat_stream_usage"] = usage

chat = client.chat.completions.create(
    model=generation_model,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=24,
)
out["chat"] = chat.choices[0].message.content
out["chat_finish"] = chat.choices[0].finish_reason
out["chat_usage"] = [chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens]
out["fingerprint"] = chat.system_fingerprint

# A conversation's second turn: the first turn's prompt comes from the prefix cache.
system = "You are a patient assistant for a garden shop. " * 8
turns = [{"role": "system", "content": system}, {"role": "user", "content": "Which flowers like shade?"}]
first = client.chat.completions.create(model=generation_model, messages=turns, max_tokens=12)
turns += [{"role": "assistant", "content": first.choices[0].message.content},
          {"role": "user", "content": "And which like sun?"}]
second = client.chat.completions.create(model=generation_model, messages=turns, max_tokens=12)
out["conversation_cached_tokens"] = [first.usage.prompt_tokens_details.cached_tokens,
                                     second.usage.prompt_tokens_details.cached_tokens, first.usage.prompt_tokens]
out["conversation_second"] = second.choices[0].message.content

sampled = client.chat.completions.create(
    model=generation_model,
    messages=[{"role": "user", "content": "Tell me a word."}],
    max_tokens=16,
    temperature=0.8,
    seed=7,
)
out["sampled"] = sampled.choices[0].message.content

def token_logprobs(content):
    return [[t.token, t.logprob, [a.token for a in t.top_logprobs]] for t in content]


with_logprobs = client.chat.completions.create(
    model=generation_model,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=8,
    logprobs=True,
    top_logprobs=3,
)
out["chat_logprobs"] = token_logprobs(with_logprobs.choices[0].logprobs.content)
streamed = []
for chunk in client.chat.completions.create(
    model=generation_model,
    messages=[{"role": "user", "content": "Name three colors."}],
    max_tokens=8,
    logprobs=True,
    top_logprobs=3,
    stream=True,
):
    for choice in chunk.choices:
        if choice.logprobs is not None and choice.logprobs.content:
            streamed.extend(token_logprobs(choice.logprobs.content))
out["chat_stream_logprobs"] = streamed

completion = client.completions.create(model=generation_model, prompt="The capital of France is", max_tokens=12)
out["completion"] = completion.choices[0].text

pieces = []
for chunk in client.completions.create(
    model=generation_model, prompt="The capital of France is", max_tokens=12, stream=True
):
    pieces.append(chunk.choices[0].text)
out["completion_stream"] = "".join(pieces)


def bits(vector):
    return [struct.unpack("<I", struct.pack("<f", x))[0] for x in vector]


floats = client.embeddings.create(model=embedding_model, input=["first text", "second text"], encoding_format="float")
out["embeddings_float"] = [bits(d.embedding) for d in floats.data]
out["embeddings_usage"] = floats.usage.prompt_tokens
encoded = client.embeddings.create(model=embedding_model, input="first text", encoding_format="base64")
raw = base64.b64decode(encoded.data[0].embedding)
out["embeddings_base64"] = [list(struct.unpack("<%dI" % (len(raw) // 4), raw))]
short = client.embeddings.create(model=embedding_model, input="first text", encoding_format="float", dimensions=64)
out["embeddings_dimensions"] = len(short.data[0].embedding)

out["models"] = sorted(m.id for m in client.models.list())

try:
    openai.OpenAI(base_url=base_url, api_key="wrong-key-0123456789abcdef", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except openai.AuthenticationError as e:
    out["wrong_key"] = e.status_code

try:
    client.chat.completions.create(
        model=generation_model, messages=[{"role": "user", "content": "x"}], max_tokens=4, n=2
    )
    out["n2"] = "accepted"
except openai.BadRequestError as e:
    out["n2"] = e.status_code

request = urllib.request.Request(base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": "Bearer " + api_key})
text = urllib.request.urlopen(request).read().decode()
families = {}
for family in text_string_to_metric_families(text):
    families[family.name] = {"type": family.type, "samples": sorted({s.name for s in family.samples})}
out["metrics"] = families

print(json.dumps(out))
