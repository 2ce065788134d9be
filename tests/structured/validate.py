"""Checks structured outputs with independent validators: Python's jsonschema for JSON Schemas,
re.fullmatch for regexes, membership for choices. Reads [{params, text}] as JSON from argv[1];
prints one line per failure and exits 1 if there is any."""

import json
import re
import sys

import jsonschema

failures = 0
for case in json.load(open(sys.argv[1])):
    params, text = case["params"], case["text"]
    try:
        if "schema" in params:
            jsonschema.validate(json.loads(text), params["schema"], cls=jsonschema.Draft202012Validator)
        elif "regex" in params:
            assert re.fullmatch(params["regex"], text), "no full match"
        elif "choices" in params:
            assert text in params["choices"], "not one of the choices"
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        failures += 1
        print(f"INVALID {params['prompt']!r}: {text!r}: {e}".splitlines()[0])
print(f"{failures} invalid")
sys.exit(1 if failures else 0)
