"""A choice's text as the model streams it -> the API-neutral chat events: thinking apart from the answer, tool
calls apart from prose. Text that may be the start of a tag is held back until it is clear, so no event is ever
taken back."""

from __future__ import annotations

from dataclasses import dataclass, field

from .chat_output import (ChatAnswer, ChatEvent, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, ToolCallStart,
                          new_call_id)
from .tool_formats import ToolFormat, ToolParseError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def held_tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers` (it may grow into one)."""
    for length in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(marker.startswith(text[-length:]) and len(marker) > length for marker in markers):
            return length
    return 0


@dataclass(frozen=True)
class Thinking:
    """A model that thinks in <think>...</think> before it answers; `opened`: the prompt already opened the tag."""
    opened: bool = False

    def split(self, text: str, final: bool) -> tuple[str, str]:
        """(thinking, answer) of the text so far, each a prefix of what it will be once more text comes (unless
        `final`): a tag cut in two is held back from both."""
        start = 0
        if not self.opened:
            stripped = text.lstrip()
            if not stripped.startswith(THINK_OPEN):
                undecided = not final and THINK_OPEN.startswith(stripped)
                return "", "" if undecided else text
            start = len(text) - len(stripped) + len(THINK_OPEN)
        end = text.find(THINK_CLOSE, start)
        if end < 0:
            thinking = text[start:]
            return thinking if final else thinking[:len(thinking) - held_tail(thinking, (THINK_CLOSE,))], ""
        return text[start:end], text[end + len(THINK_CLOSE):].lstrip()

    def answer_start(self, text: str) -> int | None:
        """Where the answer starts in `text`, or None while the model may still be thinking."""
        thinking, answer = self.split(text, final=False)
        if not answer:
            return None
        return len(text) - len(answer)


class ToolCallRouter:
    """Cuts the answer into prose and call regions of one format; each region becomes calls when it is complete
    (a call is sent whole, its arguments in one fragment, so a stream never carries a call that then fails)."""

    def __init__(self, tool_format: ToolFormat):
        self.format = tool_format
        self.pending = ""
        self.in_region = tool_format.openings == ("",)
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[ChatEvent]:
        self.pending += text
        events: list[ChatEvent] = []
        while True:
            if not self.in_region:
                starts = [i for i in (self.pending.find(opening) for opening in self.format.openings) if i >= 0]
                if not starts:
                    safe = len(self.pending) - held_tail(self.pending, self.format.openings)
                    safe = len(self.pending[:safe].rstrip())  # whitespace waits: it may only pad a call
                    events += self._prose(self.pending[:safe])
                    self.pending = self.pending[safe:]
                    return events
                events += self._prose(self.pending[:min(starts)].rstrip())
                self.pending, self.in_region = self.pending[min(starts):], True
            closing = self.format.closing
            end = self.pending.find(closing) if closing else -1
            if end < 0:
                return events
            region, self.pending = self.pending[:end + len(closing)], self.pending[end + len(closing):]
            self.in_region = False
            events += self._region(region)

    def finish(self) -> list[ChatEvent]:
        """The rest: an unclosed region is parsed as it is (a format without a closing ends with the answer)."""
        rest, self.pending = self.pending, ""
        return self._region(rest) if self.in_region and rest.strip() else self._prose(rest.rstrip())

    def _prose(self, text: str) -> list[ChatEvent]:
        return [TextDelta(text)] if text else []

    def _region(self, region: str) -> list[ChatEvent]:
        try:
            parsed = self.format.parse(region)
        except ToolParseError:
            return self._prose(region)  # never lost: what the model wrote comes back as content
        events: list[ChatEvent] = self._prose(parsed.text)
        for call in parsed.calls:
            index = len(self.calls)
            self.calls.append(ToolCall(new_call_id(), call.name, call.arguments))
            events += [ToolCallStart(index, self.calls[-1].id, call.name), ToolCallDelta(index, call.arguments)]
        return events


@dataclass
class ChoiceParser:
    """One choice's events as its text arrives, and its ChatAnswer at the end."""
    thinking: Thinking | None = None
    tool_format: ToolFormat | None = None
    text: str = ""
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    answer_fed: int = 0  # characters of the answer handed on so far

    def __post_init__(self) -> None:
        self.router = ToolCallRouter(self.tool_format) if self.tool_format else None

    def feed(self, text: str) -> list[ChatEvent]:
        self.text += text
        return self._advance(final=False)

    def finish(self, finish_reason: str) -> tuple[list[ChatEvent], ChatAnswer]:
        events = self._advance(final=True)
        if self.router:
            events += self._record(self.router.finish())
        calls = self.router.calls if self.router else []
        reason = "tool_calls" if calls and finish_reason == "stop" else finish_reason
        return events, ChatAnswer("".join(self.content), "".join(self.reasoning) if self.thinking else None,
                                  calls, reason)

    def _advance(self, final: bool) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        if self.thinking:
            thinking, answer = self.thinking.split(self.text, final)
            done = sum(map(len, self.reasoning))
            if len(thinking) > done:
                events.append(ReasoningDelta(thinking[done:]))
        else:
            answer = self.text
        piece, self.answer_fed = answer[self.answer_fed:], len(answer)
        if piece:
            events += self.router.feed(piece) if self.router else [TextDelta(piece)]
        return self._record(events)

    def _record(self, events: list[ChatEvent]) -> list[ChatEvent]:
        for event in events:
            if isinstance(event, TextDelta):
                self.content.append(event.text)
            elif isinstance(event, ReasoningDelta):
                self.reasoning.append(event.text)
        return events
