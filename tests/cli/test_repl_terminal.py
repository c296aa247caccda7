"""The chat REPL driven through a pseudo-terminal (the standard pty module), as a user at a terminal drives it:
line editing and a history kept across sessions, /set parameter, word wrapping at the terminal's width, and a
conversation that outgrows a small context and keeps going."""

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.slow  # a CLI process per test on the real model

UP = "\x1b[A"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def take_as_controlling_terminal() -> None:
    """In the child, after setsid: the pty on stdin becomes its terminal, so Ctrl-C there sends it SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A deeproots process on a pseudo-terminal of `columns` columns: send keys, wait for text."""

    def __init__(self, args: list[str], home, columns: int = 80):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {**os.environ, "DEEPROOTS_HOME": str(home), "TERM": "xterm", "COLUMNS": str(columns)}
        self.process = subprocess.Popen([sys.executable, "-m", "deeproots.cli", *args], stdin=slave, stdout=slave,
                                        stderr=slave, env=env, close_fds=True, start_new_session=True,
                                        preexec_fn=take_as_controlling_terminal)
        os.close(slave)
        self.master, self.seen, self.transcript = master, "", ""  # unmatched text; everything read

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str, timeout: float = 120) -> str:
        """Read until `pattern` (a regex) appears in the text after the last match; returns the text up to it."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.seen)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear; the terminal shows:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    text = os.read(self.master, 65536).decode(errors="replace")
                    self.seen += text
                    self.transcript += text
                except OSError:  # the process closed the terminal
                    if self.process.poll() is not None and not re.search(pattern, self.seen):
                        raise AssertionError(f"{pattern!r} never came; the terminal shows:\n{self.seen[-2000:]}")
        before, self.seen = self.seen[:found.end()], self.seen[found.end():]
        return before

    def finish(self, timeout: float = 60) -> int:
        status = self.process.wait(timeout)
        os.close(self.master)
        return status


def chat(smollm2_path, home, *options: str, columns: int = 80) -> Terminal:
    terminal = Terminal(["chat", "-m", str(smollm2_path), "--temperature", "0", *options], home, columns)
    terminal.expect(">>> ")
    return terminal


def test_arrow_keys_walk_a_history_kept_across_sessions(smollm2_path, tmp_path):
    terminal = chat(smollm2_path, tmp_path)
    terminal.send("/set parameter top_k 7\r")
    terminal.expect("Set top_k to 7.")
    terminal.send("/set parameter top_k 9\r")
    terminal.expect("Set top_k to 9.")
    terminal.send(UP + UP + "\r")  # two lines back: top_k 7 again
    terminal.expect("Set top_k to 7.")
    terminal.send("/show parameters\r")
    assert re.search(r"top_k\s+7", ANSI.sub("", terminal.expect("ctx ")))
    terminal.send("/bye\r")
    assert terminal.finish() == 0
    assert "^[[A" not in terminal.seen
    again = chat(smollm2_path, tmp_path)
    again.send(UP + UP + "\r")  # the history file brings back the last session's /show parameters
    again.expect("repeat_penalty")
    again.send(UP + UP + "\r")  # now /show parameters is the latest line and /bye the one before it
    assert again.finish() == 0


def test_answers_wrap_between_words_at_the_terminal_width(smollm2_path, tmp_path):
    terminal = chat(smollm2_path, tmp_path, "-n", "80", columns=32)
    terminal.send("Describe a forest in a few sentences.\r")
    answer = ANSI.sub("", terminal.expect(">>> ")).split("\n", 1)[1].rsplit("\n", 1)[0]
    terminal.send("/bye\r")
    assert terminal.finish() == 0
    lines = [line for line in answer.split("\n") if line]
    assert len(lines) > 2 and all(len(line) <= 32 for line in lines), lines
    # no word was cut: every line ended where the next word would not have fitted
    for line, following in zip(lines, lines[1:]):
        assert len(line) + 1 + len(following.split(" ")[0]) > 32, (line, following)


def test_a_conversation_outgrowing_the_context_drops_old_turns_and_goes_on(smollm2_path, tmp_path):
    terminal = chat(smollm2_path, tmp_path, "--ctx", "160", "-n", "32", "--system", "You are brief.")
    for i in range(8):
        terminal.send(f"Tell me one fact about the number {i + 2}.\r")
        turn = ANSI.sub("", terminal.expect(">>> "))
        assert "error" not in turn, turn
        answer = turn.split("\n", 1)[1].replace("(the conversation outgrew", "").strip()
        assert answer, turn  # every turn is answered, also after the context filled
    terminal.send("/show system\r")
    terminal.expect("You are brief.")  # kept through the trimming
    terminal.send("/bye\r")
    assert terminal.finish() == 0
    assert terminal.transcript.count("the conversation outgrew the context of 160 tokens") == 1, terminal.transcript


def test_run_without_a_prompt_at_a_terminal_opens_the_chat(smollm2_path, tmp_path):
    terminal = Terminal(["run", str(smollm2_path), "--temperature", "0", "-n", "8"], tmp_path)
    terminal.expect("Type a message; /\\? for help.")
    terminal.expect(">>> ")
    terminal.send("Hello!\r")
    turn = ANSI.sub("", terminal.expect(">>> "))
    assert turn.split("\n", 1)[1].strip(), turn
    terminal.send("\x04")  # Ctrl-D leaves
    assert terminal.finish() == 0


def test_a_slow_load_shows_a_progress_line_then_erases_it(gemma3_path, tmp_path):
    # Gemma 3's 262k-token embedding in float32 (--reference) takes several seconds to load here
    terminal = Terminal(["run", "-m", str(gemma3_path), "--reference", "--raw", "-n", "1", "Hello"], tmp_path)
    terminal.expect(r"loading \S+ \.\.\. \d+\.\d s")
    terminal.expect("\r\x1b\\[K")  # erased before the answer
    assert terminal.finish(timeout=300) == 0


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(smollm2_path, tmp_path):
    terminal = chat(smollm2_path, tmp_path, "-n", "2000", "--ctx", "4096")
    terminal.send("Count from one to one thousand, in words.\r")
    terminal.expect(r"in words\.\r?\n")  # the terminal's echo of the message
    terminal.expect(r"\w+ \w+ \w+")  # the answer is streaming
    terminal.send("\x03")
    terminal.expect(">>> ", timeout=30)
    terminal.send("/bye\r")
    assert terminal.finish() == 0


def test_an_answer_that_fills_the_context_says_so_and_the_chat_goes_on(smollm2_path, tmp_path):
    terminal = chat(smollm2_path, tmp_path, "--ctx", "96", "-n", "500")
    terminal.send("Tell me a long story about a lighthouse keeper.\r")
    terminal.expect("the context of 96 tokens filled up mid-answer")
    terminal.expect(">>> ")
    terminal.send("And then?\r")
    turn = ANSI.sub("", terminal.expect(">>> "))
    assert "error" not in turn and "outgrew the context of 96 tokens" in turn, turn
    terminal.send("/bye\r")
    assert terminal.finish() == 0
