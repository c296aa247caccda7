"""Tool calling through the official openai client against a real server process and the real default model.

SmolLM2's template knows no tools, so the generic JSON form applies: the tools are described in the system message
and the answer is held to {"tool_calls": [...]} or {"response": ...} by the grammar; the arguments of every call
validate against the function's schema, whatever the tool_choice."""

import json

import jsonschema
import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                         "parameters": CITY}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": CITY, "get_time": CITY}


@pytest.fixture(scope="module")
def server(smollm2_path):
    server = LiveServer(smollm2_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)


def ask(client, tool_choice, **extra):
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": tool_choice, "max_tokens": 80,
            "temperature": 0, "parallel_tool_calls": False, **extra}
    return client.chat.completions.create(**body)


def check_calls(calls, names=("get_weather", "get_time")):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_required_or_named_call_is_always_a_valid_call(client, tool_choice):
    choice = ask(client, tool_choice).choices[0]
    names = ("get_time",) if isinstance(tool_choice, dict) else ("get_weather", "get_time")
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls, names)
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls false


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_gives_a_valid_call_or_a_non_empty_answer(client, seed):
    choice = ask(client, "auto", temperature=1.0, seed=seed).choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message.tool_calls)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_none_answers_in_prose_without_the_tools_in_the_prompt(client):
    with_tools = ask(client, "required")
    response = ask(client, "none")
    assert response.choices[0].message.tool_calls is None and response.choices[0].message.content
    assert response.usage.prompt_tokens < with_tools.usage.prompt_tokens  # no tool instruction


def test_parallel_calls_are_each_valid(client):
    choice = ask(client, "required", parallel_tool_calls=True, max_tokens=120).choices[0]
    if choice.finish_reason == "tool_calls":
        check_calls(choice.message.tool_calls)
    else:  # the model kept calling until the limit: the text comes back, never lost
        assert choice.finish_reason == "length" and choice.message.content.startswith('{"tool_calls": [')


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_streamed_tool_deltas_reassemble_to_the_whole_answer(client, tool_choice):
    whole = ask(client, tool_choice).choices[0]
    deltas = list(ask(client, tool_choice, stream=True))
    calls: dict[int, dict] = {}
    content = []
    for chunk in deltas:
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for part in delta.tool_calls or []:
            if part.index not in calls:  # the first fragment of a call: id, type and name, once
                assert part.id and part.type == "function" and part.function.name
                calls[part.index] = {"id": part.id, "name": part.function.name, "arguments": ""}
            else:
                assert part.id is None and part.function.name is None
            calls[part.index]["arguments"] += part.function.arguments or ""
    assert deltas[-1].choices[0].finish_reason == whole.finish_reason
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]
    assert "".join(content) == (whole.message.content or "")
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice,
                                        max_tokens=80, temperature=0, parallel_tool_calls=False) as stream:
        final = stream.get_final_completion().choices[0]  # the client's own accumulator agrees
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls or []] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]


def test_a_tool_result_round_trip(client):
    call = ask(client, "required").choices[0].message.tool_calls[0]
    conversation = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                          {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}]
    answer = ask(client, "none", messages=conversation).choices[0]
    assert answer.message.content and answer.message.tool_calls is None


def bad_request(client, **body) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=5, **{"messages": ASK, **body})
    return refused.value


def test_an_unknown_tool_choice_name_is_a_400(client):
    error = bad_request(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "'nope'" in error.message and error.body["param"] == "tool_choice.function.name"


def test_a_schema_llguidance_cannot_compile_is_a_400_naming_the_tool(client):
    odd = {"type": "function", "function": {"name": "odd_tool", "parameters": {"type": "strng"}}}
    error = bad_request(client, tools=[WEATHER, odd], tool_choice="auto")
    assert "'odd_tool'" in error.message and error.body["param"] == "tools[1].function.parameters"


def test_a_tool_message_without_a_matching_call_is_a_400(client):
    error = bad_request(client, tools=[WEATHER], messages=ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "18 C"}])
    assert "'call_2'" in error.message and error.body["param"] == "messages[2].tool_call_id"


def test_tool_choice_without_tools_is_a_400(client):
    assert bad_request(client, tool_choice="required").body["param"] == "tool_choice"
