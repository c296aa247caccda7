"""The Anthropic, Responses and Ollama request converters: each API's documented request becomes the OpenAI chat
request that says the same thing (the expected OpenAI bodies are written from OpenAI's documented shapes)."""


import pytest
from pydantic import ValidationError

from deeproots.server.anthropic_request import MessagesInput, MessagesRequest
from deeproots.server.anthropic_request import chat_fields as anthropic_fields
from deeproots.server.errors import APIError
from deeproots.server.ollama_request import OllamaChatRequest, OllamaGenerateRequest, keep_alive_seconds
from deeproots.server.ollama_request import chat_fields as ollama_chat_fields
from deeproots.server.ollama_request import generate_fields
from deeproots.server.openai_responses_request import ResponsesRequest
from deeproots.server.openai_responses_request import chat_fields as responses_fields
from deeproots.server.translate import as_chat_request

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                  "parameters": WEATHER_SCHEMA}}
WEATHER_CALL = {"id": "toolu_01", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


# --- Anthropic Messages -----------------------------------------------------------------------------------

def anthropic(**body):
    return anthropic_fields(MessagesRequest.model_validate({"model": "m", "max_tokens": 64, **body}))


def test_anthropic_system_and_turns():
    fields = anthropic(system=[{"type": "text", "text": "Be brief."}], stop_sequences=["\n\n"], temperature=0.5,
                       top_k=5, messages=[{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                                          {"role": "user", "content": "Bye"}])
    assert fields["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                                  {"role": "user", "content": "Bye"}]
    assert (fields["max_tokens"], fields["stop"], fields["temperature"], fields["top_k"]) == (64, ["\n\n"], 0.5, 5)
    assert as_chat_request(fields).messages[2].text() == "Hello"


def test_anthropic_tool_round_trip_becomes_tool_calls_and_tool_messages():
    fields = anthropic(
        tools=[{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": [
                      {"type": "thinking", "thinking": "The user wants weather.", "signature": "x"},
                      {"type": "text", "text": "Let me look."},
                      {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "21C"}]},
                      {"type": "text", "text": "And tomorrow?"}]}])
    assert fields["tools"] == [WEATHER_TOOL]
    assert fields["tool_choice"] == "required" and fields["parallel_tool_calls"] is True
    assert fields["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [WEATHER_CALL],
         "reasoning_content": "The user wants weather."},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "21C"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}]


def test_anthropic_error_results_say_so():
    fields = anthropic(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "no such city", "is_error": True}]}])
    assert fields["messages"] == [{"role": "tool", "tool_call_id": "t1", "content": "Error: no such city"}]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, {"tool_choice": "auto", "parallel_tool_calls": True}),
    ({"type": "none"}, {"tool_choice": "none", "parallel_tool_calls": True}),
    ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False})])
def test_anthropic_tool_choice(choice, expected):
    fields = anthropic(messages=[{"role": "user", "content": "x"}], tool_choice=choice)
    assert {key: fields[key] for key in expected} == expected


def test_anthropic_thinking_switch():
    on = anthropic(messages=[{"role": "user", "content": "x"}], thinking={"type": "enabled", "budget_tokens": 1024})
    off = anthropic(messages=[{"role": "user", "content": "x"}], thinking={"type": "disabled"})
    assert on["chat_template_kwargs"] == {"enable_thinking": True}
    assert off["chat_template_kwargs"] == {"enable_thinking": False}


def test_anthropic_count_tokens_input_has_no_sampling_fields():
    fields = anthropic_fields(MessagesInput.model_validate({"model": "m", "messages": [{"role": "user",
                                                                                      "content": "x"}]}))
    assert fields == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}]},  # max_tokens is required
    {"max_tokens": 8, "messages": []},
    {"max_tokens": 8, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},  # Anthropic's range: 0..1
    {"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}])
def test_anthropic_refuses_what_it_cannot_run(body):
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate({"model": "m", **body})


# --- OpenAI Responses -------------------------------------------------------------------------------------

def responses(**body):
    return responses_fields(ResponsesRequest.model_validate({"model": "m", **body}))


def test_responses_text_input_and_instructions():
    fields = responses(input="Hi", instructions="Be brief.", max_output_tokens=20, temperature=0)
    assert fields["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (fields["max_tokens"], fields["temperature"], fields["stream"]) == (20, 0, False)


def test_responses_items_with_a_function_call_round_trip():
    fields = responses(
        tools=[{"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": WEATHER_SCHEMA, "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "reasoning", "id": "rs_1", "summary": []},
               {"type": "function_call", "call_id": "toolu_01", "name": "get_weather",
                "arguments": '{"city": "Paris"}', "id": "fc_1"},
               {"type": "function_call_output", "call_id": "toolu_01", "output": "21C"},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]}])
    assert fields["tools"] == [WEATHER_TOOL]
    assert fields["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert fields["parallel_tool_calls"] is False
    assert fields["messages"] == [{"role": "user", "content": "Weather in Paris?"},
                                  {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
                                  {"role": "tool", "tool_call_id": "toolu_01", "content": "21C"},
                                  {"role": "user", "content": "Thanks"}]


def test_responses_calls_join_the_assistant_text_before_them():
    fields = responses(input=[{"role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                              {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
                              {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"}])
    assert [call["id"] for call in fields["messages"][0]["tool_calls"]] == ["a", "b"]
    assert len(fields["messages"]) == 1 and fields["messages"][0]["content"] == "Looking."


def test_responses_json_schema_format_and_reasoning_effort():
    fields = responses(input="x", text={"format": {"type": "json_schema", "name": "city", "schema": WEATHER_SCHEMA,
                                                   "strict": True}}, reasoning={"effort": "low"})
    assert fields["response_format"] == {"type": "json_schema",
                                         "json_schema": {"name": "city", "schema": WEATHER_SCHEMA, "strict": True}}
    assert fields["reasoning_effort"] == "low"
    assert as_chat_request(fields).response_format.json_schema.schema_ == WEATHER_SCHEMA


def test_responses_refuse_stored_state_and_builtin_tools():
    with pytest.raises(APIError) as refused:
        responses(input="x", previous_response_id="resp_123")
    assert refused.value.status == 400 and refused.value.param == "previous_response_id"
    with pytest.raises(ValidationError):
        ResponsesRequest.model_validate({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})


# --- Ollama -----------------------------------------------------------------------------------------------

def test_ollama_options_map_to_sampling_with_ollamas_defaults():
    defaults = ollama_chat_fields(OllamaChatRequest.model_validate({"model": "m", "messages": []}))
    assert (defaults["temperature"], defaults["top_k"], defaults["top_p"], defaults["repetition_penalty"]) == \
        (0.8, 40, 0.9, 1.1)
    assert defaults["stream"] is True and defaults["max_tokens"] is None and defaults["seed"] is None
    fields = ollama_chat_fields(OllamaChatRequest.model_validate({"model": "m", "messages": [], "stream": False,
        "options": {"temperature": 0, "top_k": 1, "top_p": 0.5, "min_p": 0.1, "repeat_penalty": 1.0,
                    "presence_penalty": 0.5, "frequency_penalty": 0.25, "seed": 7, "num_predict": 12,
                    "stop": ["END"], "num_ctx": 4096, "mirostat": 0}}))
    assert {key: fields[key] for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                         "presence_penalty", "frequency_penalty", "seed", "max_tokens", "stop")} == \
        {"temperature": 0, "top_k": 1, "top_p": 0.5, "min_p": 0.1, "repetition_penalty": 1.0,
         "presence_penalty": 0.5, "frequency_penalty": 0.25, "seed": 7, "max_tokens": 12, "stop": ["END"]}
    unlimited = ollama_chat_fields(OllamaChatRequest.model_validate(
        {"model": "m", "options": {"num_predict": -1, "seed": -1}}))
    assert unlimited["max_tokens"] is None and unlimited["seed"] is None


def test_ollama_tool_calls_get_ids_that_the_tool_messages_answer_in_order():
    fields = ollama_chat_fields(OllamaChatRequest.model_validate({"model": "m", "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "21C", "tool_name": "get_weather"},
        {"role": "tool", "content": "25C", "tool_name": "get_weather"}]}))
    assert fields["tools"] == [WEATHER_TOOL]
    calls = fields["messages"][1]["tool_calls"]
    assert [call["function"]["arguments"] for call in calls] == ['{"city": "Paris"}', '{"city": "Rome"}']
    assert [message["tool_call_id"] for message in fields["messages"][2:]] == [call["id"] for call in calls]
    assert len(set(call["id"] for call in calls)) == 2


def test_ollama_tool_message_without_a_call_is_a_400():
    with pytest.raises(APIError) as refused:
        ollama_chat_fields(OllamaChatRequest.model_validate({"model": "m", "messages": [
            {"role": "user", "content": "x"}, {"role": "tool", "content": "21C"}]}))
    assert refused.value.status == 400 and refused.value.param == "messages.1"


@pytest.mark.parametrize("form, expected", [
    ("json", {"type": "json_object"}),
    (WEATHER_SCHEMA, {"type": "json_schema", "json_schema": {"schema": WEATHER_SCHEMA}})])
def test_ollama_format(form, expected):
    fields = generate_fields(OllamaGenerateRequest.model_validate({"model": "m", "prompt": "x", "format": form}))
    assert fields["response_format"] == expected


def test_ollama_generate_is_one_user_turn_after_the_system_prompt():
    fields = generate_fields(OllamaGenerateRequest.model_validate(
        {"model": "m", "prompt": "Hi", "system": "Be brief.", "think": False}))
    assert fields["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert fields["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("value, seconds", [
    (None, None), (30, 30.0), ("30", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("300ms", 0.3),
    (0, 0.0), (-1, -1.0), ("-1m", -1.0)])
def test_keep_alive_in_seconds(value, seconds):
    assert keep_alive_seconds(value) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize("value", ["5 minutes", "m", "5x", "nan"])
def test_keep_alive_refuses_other_text(value):
    with pytest.raises(APIError):
        keep_alive_seconds(value)


def test_anthropic_output_config_is_the_schema_constraint_and_the_effort():
    fields = anthropic(messages=[{"role": "user", "content": "x"}],
                       output_config={"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}, "effort": "max"})
    assert fields["response_format"] == {"type": "json_schema", "json_schema": {"schema": WEATHER_SCHEMA}}
    assert fields["reasoning_effort"] == "high"
    assert as_chat_request(fields).response_format.json_schema.schema_ == WEATHER_SCHEMA


def test_earlier_thinking_becomes_the_assistant_turns_reasoning_content():
    """Each API's way to hand back an assistant's thinking reaches the template as reasoning_content."""
    anthropic_turn = anthropic(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Think.", "signature": "s"}, {"type": "text", "text": "Done."}]},
        {"role": "user", "content": "y"}])["messages"][1]
    responses_turn = responses(input=[{"role": "user", "content": "x"},
                                      {"type": "reasoning", "id": "rs_1", "summary": [],
                                       "content": [{"type": "reasoning_text", "text": "Think."}]},
                                      {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}])[
        "messages"][1]
    ollama_turn = ollama_chat_fields(OllamaChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "Done.", "thinking": "Think."}]}))[
        "messages"][1]
    for turn in (anthropic_turn, responses_turn, ollama_turn):
        assert turn["role"] == "assistant" and turn["reasoning_content"] == "Think."
        assert as_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}, turn]}) \
            .messages[1].reasoning_content == "Think."
