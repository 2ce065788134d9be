"""The validity run of tool calling, through the official `openai` package (unchanged): REQUESTS
chat completions (20 tool sets with nested, enum, array and required parameters x 10 prompts,
`required` and `auto` alternating) to MODEL; every call must name an offered tool and its
arguments must satisfy that tool's schema (Python's `jsonschema`); a text answer must not hold
MARKUP (the opening of a call in the model's syntax).

Usage: tools_validity.py BASE_URL API_KEY MODEL REQUESTS MARKUP
Prints one JSON object: requests, calls, texts, incomplete (422: max_tokens ran out before the
call closed; no call returned), invalid (a wrong call, a `required` answer without one, any other
error), markup_in_text.
"""

import json
import sys

import jsonschema
import openai

from tool_sets import PROMPTS, TOOL_SETS

base_url, api_key, model, requests, markup_opening = sys.argv[1:6]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

checked, invalid, incomplete, calls, texts, markup = 0, [], [], 0, 0, []
# Request i: tool set i % 20 with prompt (r + set) % 10 in round r = i // 20, `required` and
# `auto` alternating within a round and swapped from one round to the next: 200 requests give
# every tool set every prompt, five times in each mode.
for i in range(int(requests)):
    tools = TOOL_SETS[i % len(TOOL_SETS)]
    prompt = PROMPTS[(i // len(TOOL_SETS) + i) % len(PROMPTS)]
    mode = "required" if (i + i // len(TOOL_SETS)) % 2 == 0 else "auto"
    try:
        got = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             tools=tools, tool_choice=mode, max_tokens=128)
    except openai.UnprocessableEntityError as e:
        # The budget ran out before the call closed (a small model repeating itself inside a
        # string): no call is returned, the client is told why (422, output incomplete).
        checked += 1
        incomplete.append([i, mode, str(e)[:200]])
        continue
    except openai.APIError as e:
        checked += 1
        invalid.append([i, mode, "refused", str(e)[:300]])
        continue
    message = got.choices[0].message
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    checked += 1
    if mode == "required" and not message.tool_calls:
        invalid.append([i, "required gave no call", message.content])
    for c in message.tool_calls or []:
        calls += 1
        if c.function.name not in schemas:
            invalid.append([i, "unoffered tool", c.function.name])
            continue
        try:
            jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            invalid.append([i, c.function.name, c.function.arguments, str(e)[:200]])
    if not message.tool_calls:
        texts += 1
        if markup_opening in (message.content or ""):
            markup.append([i, message.content])
print(json.dumps({"requests": checked, "calls": calls, "texts": texts, "incomplete": incomplete, "invalid": invalid,
                  "markup_in_text": markup}))
