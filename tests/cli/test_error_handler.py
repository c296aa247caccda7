"""main's one handler in process: an exception no command expects is one line asking for a report, the traceback
only when debugging; and hypothesis over the argument space: no traceback, exit status 0, 1 or 2."""

import argparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeproots.cli import main, run_handler


def failing(args):
    raise RuntimeError("boom")


def test_unexpected_error_is_one_line_asking_for_a_report(capsys):
    assert run_handler(argparse.Namespace(handler=failing, command="run"), debug=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected RuntimeError: boom" in err and "please report it" in err
    assert "DEEPROOTS_DEBUG=1" in err


def test_unexpected_error_shows_the_traceback_when_debugging(capsys):
    assert run_handler(argparse.Namespace(handler=failing, command="run"), debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


# Commands whose every path here ends before a model loads or a download starts: the models named are missing
# files or typos, the store is empty, and no server runs on port 9.
COMMANDS = ["run", "chat", "show", "inspect", "bench", "perplexity", "rm", "list", "ls", "create", "quantize",
            "convert", "bench-serve", "rnu", "sho", ""]
WORDS = ["-m", "/nonexistent/x.gguf", "smolm2", "-n", "-p", "-c", "-t", "-s", "-r", "-f", "--seed", "--ctx",
         "--stop", "--temperature", "--top-k", "--kv-type", "q8_0", "--raw", "--system", "--json", "--template",
         "--url", "http://127.0.0.1:9", "--concurrency", "0", "1", "-1", "-2", "x", "1e400", "nan", "\\n", "hi there",
         "", "--", "--type", "q4_k", "--name", "missing.gguf", "--debug", "--help"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.mark.slow  # ~9 s
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), words=st.lists(st.sampled_from(WORDS), max_size=6))
def test_any_command_line_exits_0_1_or_2_without_a_traceback(command, words, empty_store, monkeypatch, capsys):
    monkeypatch.setenv("DEEPROOTS_HOME", str(empty_store))
    monkeypatch.delenv("DEEPROOTS_DEBUG", raising=False)
    tail = {"run": ["-m", "/nonexistent/x.gguf"], "chat": ["-m", "/nonexistent/x.gguf"],
            "bench": ["-m", "/nonexistent/x.gguf"], "perplexity": ["-m", "/nonexistent/x.gguf"],
            "bench-serve": ["--url", "http://127.0.0.1:9"]}.get(command, [])
    argv = [command, *words, *tail]
    try:
        status = main([word for word in argv if word])
    except SystemExit as exit:  # argparse: usage errors and --help
        status = exit.code
    err = capsys.readouterr().err
    assert status in (0, 1, 2), (argv, err)
    assert "Traceback" not in err and "unexpected" not in err, (argv, err)
