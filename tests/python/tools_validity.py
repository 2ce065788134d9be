"""The validity run of tool calling, through the official `openai` package (unchanged): REQUESTS
chat completions (tool sets with nested, enum, array and required parameters x prompts,
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

base_url, api_key, model, requests, markup_opening = sys.argv[1:6]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def function(name, description, properties, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


WEATHER = function("get_weather", "Get the current weather in a city",
                   {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   ["city"])
ADD = function("add", "Add two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"])

# Validity: tool sets with nested, enum, array and required parameters, `required` and `auto`.
TOOL_SETS = [
    [WEATHER, ADD],
    [function("search_flights", "Find flights", {
        "from": {"type": "string"}, "to": {"type": "string"},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "cabin": {"enum": ["economy", "business", "first"]}}, ["from", "to", "date"])],
    [function("create_event", "Add a calendar event", {
        "title": {"type": "string", "maxLength": 40},
        "when": {"type": "object", "properties": {"day": {"type": "integer", "minimum": 1, "maximum": 31},
                                                   "hour": {"type": "integer", "minimum": 0, "maximum": 23}},
                 "required": ["day", "hour"]},
        "attendees": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
        ["title", "when"])],
    [function("set_lights", "Switch lights", {"room": {"enum": ["kitchen", "hall", "bedroom"]},
                                              "on": {"type": "boolean"}}, ["room", "on"]),
     function("set_heating", "Set the heating", {"celsius": {"type": "number", "minimum": 5, "maximum": 30}},
              ["celsius"])],
    [function("tag_photo", "Tag a photo", {"tags": {"type": "array", "items": {"enum": ["cat", "dog", "tree", "car"]}},
                                          "rating": {"type": "integer", "minimum": 1, "maximum": 5}}, ["tags"])],
    [function("send_mail", "Send an e-mail", {"to": {"type": "string", "maxLength": 40},
                                               "subject": {"type": "string", "maxLength": 40},
                                               "urgent": {"type": "boolean"}}, ["to", "subject"]),
     WEATHER],
    [function("convert", "Convert units", {"value": {"type": "number"}, "from_unit": {"enum": ["km", "mi", "m"]},
                                           "to_unit": {"enum": ["km", "mi", "m"]}}, ["value", "from_unit", "to_unit"])],
    [function("order_pizza", "Order a pizza", {
        "size": {"enum": ["small", "medium", "large"]},
        "toppings": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "address": {"type": "object", "properties": {"street": {"type": "string", "maxLength": 30},
                                                     "number": {"type": "integer", "minimum": 1, "maximum": 999}},
                    "required": ["street"]}}, ["size", "address"])],
    [function("lookup_word", "Dictionary lookup", {"word": {"type": "string", "maxLength": 30},
                                                    "language": {"enum": ["en", "fr", "de"]}}, ["word"]),
     ADD],
    [function("book_table", "Book a restaurant table", {"people": {"type": "integer", "minimum": 1, "maximum": 12},
                                                        "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                                                        "name": {"type": "string", "maxLength": 30}},
              ["people", "time", "name"])],
]
PROMPTS = ["What is the weather in Oslo?", "Please book something for tomorrow.", "Add 12 and 30.",
           "Turn on the kitchen lights.", "I need a flight from Paris to Rome on 2026-05-01.",
           "Tag this photo of a cat under a tree.", "Send a mail to Ann about lunch.", "How far is 10 km in miles?",
           "Order a large pizza to Main Street 5.", "Book a table for four at 19:30 for Lee."]
checked, invalid, incomplete, calls, texts, markup = 0, [], [], 0, 0, []
for i in range(int(requests)):
    tools = TOOL_SETS[i % len(TOOL_SETS)]
    prompt = PROMPTS[(i // len(TOOL_SETS) + i) % len(PROMPTS)]
    mode = "required" if i % 2 == 0 else "auto"
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
