"""The terminal conversation (`deeproots chat`, `deeproots run` with no prompt at a terminal) and the streamed answer
both it and `run` print. Commands follow Ollama's REPL; docs/cli.md lists them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DeeprootsError, RequestError
from .preset import PARAMETERS, Preset, PresetStore, parse_parameter, unescape
from .terminal import answer_writer

HELP = """commands:
  /set parameter NAME VALUE   set a sampling parameter (/show parameters lists them); stop takes one or more strings
  /set system TEXT            set the system message
  /show info|parameters|system|template|license
  /load MODEL                 switch to another model (the conversation starts afresh)
  /save NAME                  save model, system message and parameters as a preset: `deeproots run NAME`
  /clear                      forget the conversation
  /bye                        leave (or Ctrl-D)
  \"\"\"                         begin and end multi-line input
Ctrl-C stops the current answer; arrow keys edit the line and walk the history."""


@dataclass
class NamedModel:
    """A loaded model with the name the user gave it and, when that name is a preset, the preset."""

    model: Any  # deeproots.model.Model
    name: str  # a store name, a preset name or a path, as given
    base: str  # what a preset saved from this model names in FROM
    preset: Preset | None = None


@dataclass
class Answer:
    text: str
    n_tokens: int
    finish: str  # "stop" (end token or stop string), "length" (max tokens), "context" (it filled), "interrupted"


def stream_answer(model, ids: list[int], settings: dict[str, Any], *, verbose: bool = False) -> Answer:
    """Print the answer as it is generated (word-wrapped at a terminal). Ctrl-C ends it early ("interrupted")."""
    from .cli_options import sampling_params

    writer = answer_writer(sys.stdout)
    pieces: list[str] = []
    started = time.perf_counter()
    first_token_at, finish = None, "interrupted"
    try:
        for step in model.steps(ids, sampling_params(settings), max_tokens=settings["max_tokens"],
                                stop=settings["stop"]):
            first_token_at = first_token_at or time.perf_counter()
            pieces.append(step.text)
            writer.write(step.text)
            finish = step.finish_reason or finish
    except KeyboardInterrupt:
        finish = "interrupted"
    writer.flush()
    print()
    n_tokens = len(pieces)
    if finish == "length" and n_tokens < settings["max_tokens"]:
        finish = "context"
    if verbose and first_token_at is not None:
        decode_time = time.perf_counter() - first_token_at
        print(f"prompt: {len(ids)} tokens, first token after {first_token_at - started:.3f} s "
              f"({len(ids) / (first_token_at - started):.1f} tokens/s)\n"
              f"decode: {n_tokens} tokens, {max(n_tokens - 1, 0) / decode_time if decode_time else 0:.1f} tokens/s",
              file=sys.stderr)
    return Answer("".join(pieces), n_tokens, finish)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def plain_text_mode(named: NamedModel, raw: bool) -> bool:
    """Whether to complete plain text: --raw, or a model with no chat template at all. Says once why a template-less
    or base model may answer poorly."""
    from .tokenizer.chat import TEMPLATE_KEY

    model = named.model
    if raw:
        return True
    if model.template is None:
        note(f"{named.name} has no chat template (a base model?): completing the text as given, as --raw does.")
        return True
    if TEMPLATE_KEY not in model.file.metadata and not (named.preset and named.preset.template):
        note(f"note: {named.name} has no chat template of its own (a base model?); using the built-in one for its "
             "family. For plain text completion, use --raw.")
    return False


def read_user_message(prompt: Callable[[str], str] = input) -> str:
    line = prompt(">>> ")
    if not line.strip().startswith('"""'):
        return line
    lines = [line.strip()[3:]]
    while not lines[-1].rstrip().endswith('"""'):
        lines.append(prompt("... "))
    lines[-1] = lines[-1].rstrip()[:-3]
    return "\n".join(lines).strip()


@dataclass
class ChatSession:
    named: NamedModel
    settings: dict[str, Any]  # cli_options.CHAT_DEFAULTS' keys
    system: str | None
    raw: bool
    load: Callable[[str], NamedModel]  # /load
    verbose: bool = False
    history: list[dict[str, str]] = field(default_factory=list)  # user, assistant, user, ...
    told_about_trimming: bool = False

    def __post_init__(self) -> None:
        self.raw = plain_text_mode(self.named, self.raw)

    def run(self) -> None:
        note("Type a message; /? for help.")
        while True:
            try:
                message = read_user_message()
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                note("\nUse Ctrl-D or /bye to leave.")
                continue
            text = message.strip()
            if text in ("/bye", "/exit"):
                return
            if text.startswith("/"):
                self.command(text)
            elif text:
                self.reply(message)

    # --- commands --------------------------------------------------------------------------
    def command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        handlers = {"/?": self.show_help, "/help": self.show_help, "/set": self.set, "/show": self.show,
                    "/load": self.load_model, "/save": self.save, "/clear": self.clear}
        if name not in handlers:
            note(f"Unknown command {name!r}; /? lists the commands.")
            return
        try:
            handlers[name](rest.strip())
        except (DeeprootsError, OSError) as error:  # a bad value, an unknown model, an unwritable store
            note(f"error: {error}")

    def show_help(self, _: str) -> None:
        print(HELP)

    def clear(self, _: str) -> None:
        self.history.clear()
        note("Cleared the conversation.")

    def set(self, text: str) -> None:
        what, _, value = text.partition(" ")
        if what == "system":
            self.system = value.strip() or None
            note("Set the system message.")
            return
        if what == "parameter":
            what, _, value = value.strip().partition(" ")
        if not what or not value.strip():
            raise RequestError("usage: /set parameter NAME VALUE, or /set system TEXT")
        if what == "stop":
            self.settings["stop"] = [unescape(word) for word in value.split()]
            note(f"Set stop to {self.settings['stop']}.")
            return
        name, parsed = parse_parameter(what, value.strip())
        if name == "ctx":
            raise RequestError("the context is set when the model loads: use --ctx, or PARAMETER ctx in a preset")
        from .cli_options import sampling_params

        sampling_params({**self.settings, name: parsed})  # refuses an invalid value before it is kept
        self.settings[name] = parsed
        note(f"Set {name} to {parsed}.")

    def show(self, what: str) -> None:
        model = self.named.model
        if what == "parameters":
            width = max(map(len, self.settings))
            print("\n".join(f"{name:<{width}}  {value}" for name, value in self.settings.items()))
            print(f"{'ctx':<{width}}  {model.context}")
        elif what == "system":
            print(self.system or "(no system message)")
        elif what == "template":
            print(model.template.source if model.template else "(no chat template)")
        elif what in ("info", "license"):
            from .inspect import describe, print_rows, summarize

            summary = summarize(model.path)
            rows = describe(summary, model.context, model.kv_type) if what == "info" else []
            print_rows(rows + [("license", summary.license or "(not stated in the file)")])
        else:
            raise RequestError("usage: /show info|parameters|system|template|license")

    def load_model(self, name: str) -> None:
        if not name:
            raise RequestError("usage: /load MODEL")
        self.named = self.load(name)
        preset = self.named.preset
        if preset:
            self.settings.update({k: v for k, v in preset.parameters.items() if k in self.settings})
            self.system = preset.system if preset.system is not None else self.system
        self.history.clear()
        self.raw = plain_text_mode(self.named, False)
        note(f"Loaded {name}; the conversation starts afresh.")

    def save(self, name: str) -> None:
        if not name:
            raise RequestError("usage: /save NAME")
        from .cli_options import CHAT_DEFAULTS

        parameters = {k: v for k, v in self.settings.items() if v != CHAT_DEFAULTS[k] and k in PARAMETERS}
        preset = self.named.preset
        saved = Preset(self.named.base, self.system, parameters, preset.template if preset else None)
        path = PresetStore().save(name, saved)
        note(f"Saved {path}; `deeproots run {name}` or `/load {name}` uses it.")

    # --- answers ---------------------------------------------------------------------------
    def reply(self, message: str) -> None:
        model = self.named.model
        if self.raw:  # plain completion: each message on its own
            stream_answer(model, model.tokenize(message), self.settings, verbose=self.verbose)
            return
        self.history.append({"role": "user", "content": message})
        try:
            ids = self.fitted_prompt()
            answer = stream_answer(model, ids, self.settings, verbose=self.verbose)
        except DeeprootsError as error:
            self.history.pop()
            note(f"error: {error}")
            return
        except KeyboardInterrupt:  # before the answer began (the prompt was still being read): drop the message
            self.history.pop()
            print()
            return
        self.history.append({"role": "assistant", "content": answer.text})
        if answer.finish == "context":
            note(f"(the context of {model.context} tokens filled up mid-answer; the oldest turns make room for the "
                 "next one)")

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def fitted_prompt(self) -> list[int]:
        """The prompt ids of the conversation, dropping its oldest turns (never the system message or the new
        message) until an answer has room: min(max_tokens, a quarter of the context)."""
        model = self.named.model
        room = min(self.settings["max_tokens"], model.context // 4)
        ids = model.apply_chat_template(self.messages(), tokenize=True)
        while len(ids) + room > model.context and len(self.history) > 1:
            del self.history[:2]  # the oldest user message and its answer
            if not self.told_about_trimming:
                note(f"(the conversation outgrew the context of {model.context} tokens: dropping the oldest turns, "
                     "keeping the system message)")
                self.told_about_trimming = True
            ids = model.apply_chat_template(self.messages(), tokenize=True)
        if len(ids) >= model.context:
            raise RequestError(f"this message needs {len(ids)} tokens with the system message but the context holds "
                               f"{model.context}; shorten it or raise --ctx")
        return ids
