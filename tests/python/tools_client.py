"""The official `openai` package, unchanged, calling tools through steadytextd's chat completions
and Responses API.

Usage: tools_client.py BASE_URL API_KEY TOOLS_MODEL PLAIN_MODEL
TOOLS_MODEL's chat template takes tools (Hermes <tool_call> calls); PLAIN_MODEL's does not.
Prints one JSON object of what came back; tests/tools.rs checks it (and compares it with stctl).
The validity run is tools_validity.py.
"""

import json
import sys

import openai

from tool_sets import ADD, WEATHER, function

base_url, api_key, tools_model, plain_model = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
out = {}


def create(**kw):
    return client.chat.completions.create(model=kw.pop("model", tools_model), max_tokens=kw.pop("max_tokens", 96),
                                          **kw)


def answer(completion):
    choice = completion.choices[0]
    calls = [[c.id, c.type, c.function.name, c.function.arguments] for c in choice.message.tool_calls or []]
    return {"finish": choice.finish_reason, "content": choice.message.content, "calls": calls}


def streamed(**kw):
    """The same answer from the stream: content pieces joined, call deltas merged by index."""
    content, calls, finish = [], {}, None
    for chunk in create(stream=True, **kw):
        for choice in chunk.choices:
            if choice.delta.content:
                content.append(choice.delta.content)
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, ["", "", "", ""])
                call[0] += d.id or ""
                call[1] += d.type or ""
                call[2] += (d.function.name or "") if d.function else ""
                call[3] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    return {"finish": finish, "content": "".join(content) or None, "calls": [calls[i] for i in sorted(calls)]}


# A call from the first token, streamed and not, and again (the cache's bytes).
paris = dict(messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER, ADD],
             tool_choice="required", parallel_tool_calls=False)
out["required"] = answer(create(**paris))
out["required_stream"] = streamed(**paris)
out["required_again"] = answer(create(**paris))
named = dict(paris, tool_choice={"type": "function", "function": {"name": "add"}})
out["named"] = answer(create(**named))

# `auto`: a model that opens a call on its own (after one in its history) is held from there;
# one that answers in text is not constrained at all.
history = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
               "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
           {"role": "user", "content": "Weather in Rome?"}]
out["auto_call"] = answer(create(messages=history, tools=[WEATHER, ADD]))
out["auto_call_stream"] = streamed(messages=history, tools=[WEATHER, ADD])
text = dict(messages=[{"role": "user", "content": "Write one sentence about the sea."}], tools=[WEATHER])
out["auto_text"] = answer(create(**text))
out["auto_text_stream"] = streamed(**text)

# The call's output goes back as a tool turn; the answer after it.
call = out["auto_call"]["calls"][0] if out["auto_call"]["calls"] else ["call_x", "function", "get_weather", "{}"]
after = history + [
    {"role": "assistant", "content": None, "tool_calls": [{"id": call[0], "type": "function",
                                                            "function": {"name": call[2], "arguments": call[3]}}]},
    {"role": "tool", "tool_call_id": call[0], "content": "rain, 14 C"}]
out["after_tool"] = answer(create(messages=after, tools=[WEATHER, ADD], tool_choice="none", max_tokens=24))

# The Responses API: the same conversation as `paris`, the same call; streamed, the package
# assembles the same response; the call's output goes back as a function_call_output item.
def flat(tool):
    return {"type": "function", **tool["function"]}


def response(**kw):
    return client.responses.create(model=tools_model, max_output_tokens=kw.pop("max_output_tokens", 96),
                                   **kw).model_dump(exclude={"created_at"})


def response_streamed(**kw):
    with client.responses.stream(model=tools_model, max_output_tokens=kw.pop("max_output_tokens", 96),
                                 **kw) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response().model_dump(exclude={"created_at"})
    # The package's own additions to what it parsed from the stream (None: it parsed nothing).
    for item in final["output"]:
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return final, deltas


paris_items = dict(input="What is the weather in Paris?", tools=[flat(WEATHER), flat(ADD)], tool_choice="required",
                   parallel_tool_calls=False)
out["responses"] = response(**paris_items)
out["responses_stream"], _ = response_streamed(**paris_items)
fc = next((o for o in out["responses"]["output"] if o["type"] == "function_call"), None) or {
    "call_id": "call_x", "name": "get_weather", "arguments": "{}"}
followup = dict(instructions="You are a weather assistant.", tools=[flat(WEATHER), flat(ADD)], tool_choice="none",
                max_output_tokens=24, input=[
                    {"role": "user", "content": "What is the weather in Paris?"},
                    {"type": "function_call", "call_id": fc["call_id"], "name": fc["name"], "arguments": fc["arguments"]},
                    {"type": "function_call_output", "call_id": fc["call_id"], "output": "rain, 14 C"}])
out["responses_text"] = response(**followup)
out["responses_text_stream"], out["responses_text_deltas"] = response_streamed(**followup)
out["responses_count"] = client.responses.input_tokens.count(
    model=tools_model, **{k: v for k, v in followup.items() if k != "max_output_tokens"}).input_tokens
try:
    response(input="hi", previous_response_id="resp_123")
    out["responses_stored"] = "served"
except openai.BadRequestError as e:
    out["responses_stored"] = [e.status_code, e.body.get("message", "") if isinstance(e.body, dict) else str(e.body)]

# Errors: each a 400 in OpenAI's shape, naming the cause.
errors = {
    "no_template": dict(model=plain_model, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER]),
    "bad_schema": dict(messages=[{"role": "user", "content": "hi"}], tools=[function("f", "", {"x": {"type": "nope"}}, [])],
                       tool_choice="required"),
    "not_offered": dict(messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
                        tool_choice={"type": "function", "function": {"name": "send_mail"}}),
    "image": dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
                  tools=[WEATHER]),
    "custom_tool": dict(messages=[{"role": "user", "content": "hi"}], tools=[{"type": "custom", "custom": {"name": "x"}}]),
}
out["errors"] = {}
for name, kw in errors.items():
    try:
        create(**kw)
        out["errors"][name] = "served"
    except openai.BadRequestError as e:
        out["errors"][name] = [e.status_code, e.body.get("message", "") if isinstance(e.body, dict) else str(e.body)]

print(json.dumps(out))
