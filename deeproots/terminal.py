"""Terminal niceties for the CLI: word-wrapped streaming, a load progress line, readline history."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

LOAD_NOTICE_AFTER = 1.0  # seconds: faster loads show nothing
HISTORY_LENGTH = 1000


class WordWrapper:
    """Writes streamed text wrapped at `width` columns, breaking only between words (a word longer than the line
    is written whole). Holds back the word being written until a space or newline ends it, or `flush`."""

    def __init__(self, out: TextIO, width: int):
        self.out, self.width = out, max(width, 1)
        self.column = 0  # characters already on the current line
        self.word = ""  # the unfinished word, not yet written
        self.space = ""  # the spaces before it, written only if the word stays on this line

    def write(self, text: str) -> None:
        for char in text:
            if char == "\n":
                self._put_word()
                self.out.write("\n")
                self.column, self.space = 0, ""
            elif char in " \t":
                self._put_word()
                self.space += char
            else:
                self.word += char
        self.out.flush()

    def flush(self) -> None:
        self._put_word()
        self.out.flush()

    def _put_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.space) + len(self.word) > self.width:
            self.out.write("\n")
            self.column, self.space = 0, ""
        self.out.write(self.space + self.word)
        self.column += len(self.space) + len(self.word)
        self.word = self.space = ""


class PlainWriter:
    """Stands in for WordWrapper where output is not a terminal: text goes out as it comes."""

    def __init__(self, out: TextIO):
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def flush(self) -> None:
        self.out.flush()


def answer_writer(out: TextIO = sys.stdout) -> WordWrapper | PlainWriter:
    """A word-wrapping writer at the terminal's width when `out` is a terminal, else a plain one."""
    if out.isatty():
        return WordWrapper(out, shutil.get_terminal_size().columns)
    return PlainWriter(out)


@contextmanager
def load_progress(label: str, err: TextIO = sys.stderr) -> Iterator[None]:
    """While the block runs: after LOAD_NOTICE_AFTER seconds, a `loading LABEL ... 2.1 s` line on a terminal, updated
    and erased when done. Nothing when stderr is not a terminal (logs stay clean; --verbose prints the load time)."""
    if not err.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(0.25):
            elapsed = time.monotonic() - started
            if elapsed >= LOAD_NOTICE_AFTER:
                err.write(f"\rloading {label} ... {elapsed:.1f} s")
                err.flush()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if time.monotonic() - started >= LOAD_NOTICE_AFTER:
            err.write("\r\033[K")  # erase the line
            err.flush()


def enable_line_editing(history: Path) -> None:
    """Arrow keys, editing and a history kept in `history` for input() (readline, where Python has it)."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: input() still works, without history
        return
    import atexit

    readline.set_history_length(HISTORY_LENGTH)
    try:
        readline.read_history_file(history)
    except OSError:
        pass  # no history yet, or an unreadable one: start afresh

    def save() -> None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass  # an unwritable store loses the history, not the session

    atexit.register(save)
