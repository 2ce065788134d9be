"""An agent loop of the `openai-agents` package, unchanged, against steadytextd's Responses API.

Usage: agent_client.py BASE_URL API_KEY TOOLS_MODEL
One agent with two function tools runs the same task three times (twice, then streamed): it calls
a tool, gets its output and finishes. Prints one JSON object per run (the tools' calls, the final
output and every item of the run); tests/tools.rs checks that the runs are the same bytes.
"""

import asyncio
import json
import sys

from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

base_url, api_key, tools_model = sys.argv[1:4]
set_tracing_disabled(True)
client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
calls = []


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    calls.append(["get_weather", city])
    return f"rain, 14 C in {city}"


@function_tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    calls.append(["add", a, b])
    return a + b


# The first turn must call a tool; the package then resets tool_choice (auto), as it does by default.
agent = Agent(name="assistant", instructions="You answer with the tools' results.", tools=[get_weather, add],
              model=OpenAIResponsesModel(model=tools_model, openai_client=client),
              model_settings=ModelSettings(tool_choice="required", max_tokens=96, store=False))
TASK = "What is the weather in Paris?"


def run_record(result):
    record = {"calls": list(calls), "final": result.final_output,
              "items": [item.to_input_item() for item in result.new_items]}
    calls.clear()
    return record


async def main():
    runs = []
    for _ in range(2):
        runs.append(run_record(await Runner.run(agent, TASK, max_turns=4)))
    streamed = Runner.run_streamed(agent, TASK, max_turns=4)
    async for _ in streamed.stream_events():
        pass
    runs.append(run_record(streamed))
    print(json.dumps(runs, default=str))


asyncio.run(main())
