"""Response bodies and stream chunks in the OpenAI shapes (chat.completion, text_completion, SSE): the OpenAI
writer of the shared chat run (chat.py) and of completions."""

from __future__ import annotations

import json
import time

from typing import AsyncIterator

from ..generate import GenerationStep
from ..tokenizer import Tokenizer
from .chat import ChatStep
from .chat_output import ChatAnswer, ChatEvent, ReasoningDelta, TextDelta, ToolCallStart, new_id
from .generation import Choice


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int, drafts: tuple[int, int] = (0, 0)) -> dict:
    """Token counts; cached_tokens only ever counts hits in the request's own prefix-cache namespace. `drafts`:
    speculative decoding's (accepted, rejected) draft tokens, reported under OpenAI's names when there were any."""
    counts = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
              "total_tokens": prompt_tokens + completion_tokens,
              "prompt_tokens_details": {"cached_tokens": cached_tokens}}
    if any(drafts):
        counts["completion_tokens_details"] = {"accepted_prediction_tokens": drafts[0],
                                               "rejected_prediction_tokens": drafts[1]}
    return counts


def reported_steps(steps: list[GenerationStep], tokenizer: Tokenizer) -> list[GenerationStep]:
    """Steps whose token belongs to the answer: an end token is not part of it (as OpenAI reports)."""
    return [step for step in steps if step.logprob is not None and step.token_id not in tokenizer.stop_ids]


def _token_entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict:
    data = tokenizer.token_bytes(token_id)
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def chat_logprobs(steps: list[GenerationStep], tokenizer: Tokenizer) -> dict:
    """{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}"""
    return {"content": [
        {**_token_entry(tokenizer, step.token_id, step.logprob.logprob),
         "top_logprobs": [_token_entry(tokenizer, token, value) for token, value in step.logprob.top]}
        for step in reported_steps(steps, tokenizer)]}


def completion_logprobs(steps: list[GenerationStep], tokenizer: Tokenizer, text_offset: int = 0) -> dict:
    """The legacy shape: parallel lists tokens, token_logprobs, top_logprobs ({token: logprob}), text_offset."""
    tokens, values, tops, offsets = [], [], [], []
    for step in reported_steps(steps, tokenizer):
        entry = _token_entry(tokenizer, step.token_id, step.logprob.logprob)
        tokens.append(entry["token"])
        values.append(entry["logprob"])
        tops.append({_token_entry(tokenizer, token, value)["token"]: value for token, value in step.logprob.top})
        offsets.append(text_offset)
        text_offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


class Shapes:
    """What every OpenAI body and chunk carries: the id, creation time and model name."""
    object, chunk_object, id_prefix = "", "", ""

    def __init__(self, model: str, tokenizer: Tokenizer, with_logprobs: bool):
        self.id, self.created, self.model = new_id(self.id_prefix, "-"), int(time.time()), model
        self.tokenizer, self.with_logprobs = tokenizer, with_logprobs

    def _envelope(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": "deeproots", "choices": choices}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
                    drafts: tuple[int, int] = (0, 0)) -> dict:
        return {**self._envelope(self.chunk_object, []),
                "usage": usage(prompt_tokens, completion_tokens, cached_tokens, drafts)}


class ChatShapes(Shapes):
    """chat.completion bodies and chunks from the shared chat run's answers and events."""
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def final(self, answers: list[ChatAnswer], choices: list[Choice], chat_usage) -> dict:
        return {**self._envelope(self.object, [self.final_choice(answer, choice)
                                               for answer, choice in zip(answers, choices)]),
                "usage": usage(chat_usage.prompt_tokens, chat_usage.completion_tokens, chat_usage.cached_tokens,
                               chat_usage.draft_tokens)}

    def final_choice(self, answer: ChatAnswer, choice: Choice) -> dict:
        message: dict = {"role": "assistant", "content": answer.content if answer.content or not answer.tool_calls
                         else None}
        if answer.reasoning is not None:  # vLLM's field and the newer name, both
            message["reasoning_content"] = message["reasoning"] = answer.reasoning
        if answer.tool_calls:
            message["tool_calls"] = [{"id": call.id, "type": "function",
                                      "function": {"name": call.name, "arguments": call.arguments}}
                                     for call in answer.tool_calls]
        return {"index": choice.index, "message": message,
                "logprobs": chat_logprobs(choice.steps, self.tokenizer) if self.with_logprobs else None,
                "finish_reason": answer.finish_reason}

    def first_chunk(self, index: int) -> dict:
        return self._envelope(self.chunk_object, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}])

    def chunks(self, item: ChatStep) -> list[dict]:
        """A step's chunks: one per event (a step may end text and start a call), the step's logprobs on the
        first, its finish_reason on the last; a step with neither events nor anything else to say sends none."""
        deltas = [event_delta(event) for event in item.events]
        finish = item.answer.finish_reason if item.answer else None
        if not deltas and (finish or self.with_logprobs):
            deltas = [{}]
        chunks = []
        for number, delta in enumerate(deltas):
            chunks.append(self._envelope(self.chunk_object, [{
                "index": item.index, "delta": delta,
                "finish_reason": finish if number == len(deltas) - 1 else None,
                "logprobs": chat_logprobs([item.step], self.tokenizer) if self.with_logprobs and number == 0
                else None}]))
        return chunks


def event_delta(event: ChatEvent) -> dict:
    """One event as an OpenAI chunk's delta: a call's id, type and name come once, its arguments after."""
    if isinstance(event, TextDelta):
        return {"content": event.text}
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text, "reasoning": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]}


async def chat_chunks(items, shapes: ChatShapes, n: int, options) -> AsyncIterator[str]:
    """The SSE of a streamed chat completion: a role chunk per choice, each step's chunks, usage if asked, [DONE]."""
    for index in range(n):
        yield sse(shapes.first_chunk(index))
    async for item in items:
        if isinstance(item, ChatStep):
            for chunk in shapes.chunks(item):
                yield sse(chunk)
        elif options and options.include_usage:
            yield sse(shapes.usage_chunk(item.prompt_tokens, item.completion_tokens, item.cached_tokens,
                                         item.draft_tokens))
    yield sse("[DONE]")


class CompletionShapes(Shapes):
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl"

    def __init__(self, model: str, tokenizer: Tokenizer, with_logprobs: bool):
        super().__init__(model, tokenizer, with_logprobs)
        self.text_offsets: dict[int, int] = {}  # per choice: text streamed so far, for logprobs.text_offset

    def final(self, choices: list[Choice], prompt_tokens: int, cached_tokens: int,
              drafts: tuple[int, int] = (0, 0)) -> dict:
        return {**self._envelope(self.object, [self.final_choice(choice) for choice in choices]),
                "usage": usage(prompt_tokens, sum(len(choice.steps) for choice in choices), cached_tokens, drafts)}

    def final_choice(self, choice: Choice) -> dict:
        return {"index": choice.index, "text": choice.text, "finish_reason": choice.finish_reason,
                "logprobs": completion_logprobs(choice.steps, self.tokenizer) if self.with_logprobs else None}

    def chunk(self, index: int, step: GenerationStep) -> dict:
        logprobs = None
        if self.with_logprobs:  # text_offset counts from the start of this choice's text, across chunks
            logprobs = completion_logprobs([step], self.tokenizer, self.text_offsets.get(index, 0))
            self.text_offsets[index] = self.text_offsets.get(index, 0) + sum(map(len, logprobs["tokens"]))
        return self._envelope(self.chunk_object, [{
            "index": index, "text": step.text, "finish_reason": step.finish_reason, "logprobs": logprobs}])
