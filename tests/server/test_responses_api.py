"""The official openai client's Responses API against a real server process and the default model: text and item
input, instructions, streaming, a function tool round trip, text.format json_schema, and errors."""

import json

import jsonschema
import openai
import pytest
from live_server import openai_client, serving

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
QUESTION = "What is the capital of France?"
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def server(smollm2_path):
    yield from serving(smollm2_path)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def test_text_input_is_answered_as_the_chat_route_answers_it(client):
    response = client.responses.create(model=MODEL, input=QUESTION, instructions="Be brief.", max_output_tokens=16,
                                       temperature=0)
    chat = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}])
    assert response.object == "response" and response.model == MODEL
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_item_input_with_earlier_turns(client):
    items = [{"role": "user", "content": QUESTION},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
             {"role": "user", "content": [{"type": "input_text", "text": "And of Italy?"}]}]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=12, temperature=0)
    chat = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}])
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_stream_gives_the_same_response(client):
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0)
    events = list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0,
                                          stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text
    short = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=60, temperature=0)
    with client.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=60, temperature=0) as stream:
        final = stream.get_final_response()  # the client's own accumulation (it needs response.completed)
    assert final.status == short.status == "completed" and final.output_text == short.output_text


def test_function_call_round_trip(client):
    called = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                                     tool_choice="required", parallel_tool_calls=False, temperature=0,
                                     max_output_tokens=60)
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    with client.responses.stream(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                                 tool_choice="required", parallel_tool_calls=False, temperature=0,
                                 max_output_tokens=60) as stream:
        streamed = [item for item in stream.get_final_response().output if item.type == "function_call"]
    assert [(item.name, item.arguments) for item in streamed] == [(calls[0].name, calls[0].arguments)]
    answered = client.responses.create(
        model=MODEL, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_output_tokens=30,
        input=[{"role": "user", "content": "What is the weather in Paris?"}, calls[0],
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 degrees and sunny"}])
    assert answered.output_text and not [item for item in answered.output if item.type == "function_call"]


def test_a_named_function_is_called(client):
    response = client.responses.create(model=MODEL, input="Hello", tools=[WEATHER_TOOL], temperature=0,
                                       tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
                                       parallel_tool_calls=False)
    assert [item.name for item in response.output if item.type == "function_call"] == ["get_weather"]


def test_text_format_json_schema(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"],
              "additionalProperties": False}
    response = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=40,
                                       text={"format": {"type": "json_schema", "name": "capital", "schema": schema,
                                                        "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)


@pytest.mark.parametrize("body, param", [
    ({"input": QUESTION, "previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": QUESTION, "temperature": 3}, "temperature"),
    ({"input": QUESTION, "tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "21C"}]}, "messages[0].tool_call_id"),
    ({"input": QUESTION, "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "get_time"}},
     "tool_choice.function.name")])
def test_errors_in_openais_shape(client, body, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, **body)
    assert refused.value.body["param"].startswith(param)
