"""The official `anthropic` package, unchanged, calling tools through steadytextd's Messages API.

Usage: messages_client.py BASE_URL API_KEY TOOLS_MODEL
Prints one JSON object of what came back; tests/tools.rs checks it (and compares its calls with
what the `openai` package got for the same conversation). The key goes as `x-api-key`, the
package's own way.
"""

import json
import sys

import anthropic

base_url, api_key, tools_model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0)
out = {}

WEATHER = {"name": "get_weather", "description": "Get the current weather in a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}}
ADD = {"name": "add", "description": "Add two numbers", "input_schema": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}


def create(**kw):
    return client.messages.create(model=tools_model, max_tokens=kw.pop("max_tokens", 96), **kw).model_dump()


def streamed(**kw):
    """The message the package assembles from the stream, and the text pieces it saw."""
    with client.messages.stream(model=tools_model, max_tokens=kw.pop("max_tokens", 96), **kw) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message().model_dump()
    return message, pieces


# The conversation the openai package sent with tool_choice "required" and no parallel calls.
paris = dict(messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER, ADD],
             tool_choice={"type": "any", "disable_parallel_tool_use": True})
out["any"] = create(**paris)
out["any_stream"], _ = streamed(**paris)
out["any_again"] = create(**paris)

# The call's result goes back as a tool_result block; the answer after it is text.
call = next((b for b in out["any"]["content"] if b["type"] == "tool_use"), None) or {
    "id": "toolu_x", "name": "get_weather", "input": {"city": "Paris"}}
after = dict(messages=paris["messages"] + [
    {"role": "assistant", "content": [{"type": "tool_use", "id": call["id"], "name": call["name"],
                                       "input": call["input"]}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "rain, 14 C"}]}],
    tools=[WEATHER, ADD], tool_choice={"type": "none"}, max_tokens=24,
    system="You are a weather assistant.")
out["after_tool"] = create(**after)
out["after_tool_stream"], out["after_tool_pieces"] = streamed(**after)

# The token count of a request is the input_tokens its answer reports.
out["count_any"] = client.messages.count_tokens(model=tools_model, **paris).input_tokens
out["count_after_tool"] = client.messages.count_tokens(
    model=tools_model, **{k: v for k, v in after.items() if k != "max_tokens"}).input_tokens

# Stop sequences: named back when one cut the answer.
out["stopped"] = create(messages=[{"role": "user", "content": "Count from 1 to 20 with commas."}],
                        stop_sequences=["count"], max_tokens=48)

# Errors: each in Anthropic's shape, naming the cause.
errors = {
    "image": dict(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]),
    "not_offered": dict(messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
                        tool_choice={"type": "tool", "name": "send_mail"}),
    "thinking": dict(messages=[{"role": "user", "content": "hi"}],
                     thinking={"type": "enabled", "budget_tokens": 1024}),
}
out["errors"] = {}
for name, kw in errors.items():
    try:
        create(**kw)
        out["errors"][name] = "served"
    except anthropic.BadRequestError as e:
        out["errors"][name] = [e.status_code, e.body["error"]["type"], e.body["error"]["message"]]
try:
    anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0).messages.create(
        model=tools_model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["errors"]["wrong_key"] = "served"
except anthropic.AuthenticationError as e:
    out["errors"]["wrong_key"] = [e.status_code, e.body["error"]["type"], e.body["error"]["message"]]

print(json.dumps(out))
