"""Every ordinary mistake ends in one line on stderr and a conventional exit status, never a traceback: real
`deeproots` processes on a throwaway store (docs/cli.md, "Exit statuses")."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a CLI process per test


def deeproots(*args: str, home, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DEEPROOTS_HOME": str(home), **(env or {})}
    environment.pop("DEEPROOTS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "deeproots.cli", *args], capture_output=True, text=True,
                          env=environment, input=stdin, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, (fragment, result.stderr)


def test_random_seed_minus_one_answers(smollm2_path, tmp_path):
    result = deeproots("run", "-m", str(smollm2_path), "--seed", "-1", "-n", "4", "hi", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "Traceback" not in result.stderr


def test_seed_below_minus_one_is_a_usage_error(tmp_path):
    one_line_error(deeproots("run", "--seed", "-2", "hi", home=tmp_path), 2, "--seed", "-1 for a random seed")


def test_output_into_a_closed_pipe_ends_quietly(smollm2_path, tmp_path):
    command = (f"{sys.executable} -m deeproots.cli run -m {smollm2_path} -n 200 --temperature 0 "
               f"'Write a long story about a dragon.' | head -c 1; echo \" status=${{PIPESTATUS[0]}}\"")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DEEPROOTS_HOME": str(tmp_path)})
    assert result.stdout.endswith(" status=0\n"), result.stdout
    assert result.stderr == "", result.stderr  # no BrokenPipeError, no "Exception ignored"


def test_perplexity_of_a_missing_file(tmp_path):
    one_line_error(deeproots("perplexity", str(tmp_path / "missing.txt"), home=tmp_path), 1,
                   "No such file or directory", "missing.txt")


def test_perplexity_of_a_folder(tmp_path):
    one_line_error(deeproots("perplexity", str(tmp_path), home=tmp_path), 1, "Is a directory", str(tmp_path))


def test_bench_with_zero_repetitions_is_a_usage_error(tmp_path):
    one_line_error(deeproots("bench", "-r", "0", home=tmp_path), 2, "-r/--repetitions", "at least 1")


def test_bench_serve_without_a_server(tmp_path):
    result = deeproots("bench-serve", "--url", "http://127.0.0.1:9", "--concurrency", "1", home=tmp_path)
    one_line_error(result, 1, "no server answers at http://127.0.0.1:9", "deeproots serve")


def test_unwritable_store_says_how_to_move_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a store under a regular file cannot be created, even by root
    result = deeproots("run", "hi", home=blocker / "store")
    one_line_error(result, 1, f"cannot use the store folder {blocker / 'store'}", "set DEEPROOTS_HOME")


def test_misspelt_model_names_the_close_one(tmp_path):
    one_line_error(deeproots("run", "-m", "smolm2-135m", "hi", home=tmp_path), 1,
                   "unknown model 'smolm2-135m'", "did you mean 'smollm2-135m'?")
    one_line_error(deeproots("run", "gema3-270m", home=tmp_path), 1, "did you mean 'gemma3-270m'?", "-p")


def test_misspelt_command_names_the_close_one(tmp_path):
    one_line_error(deeproots("rnu", "hi", home=tmp_path), 2, "unknown command 'rnu'", "did you mean 'run'?")
    one_line_error(deeproots("lst", home=tmp_path), 2, "did you mean 'list'?")


def test_ctrl_c_exits_130(smollm2_path, tmp_path):
    import signal
    import time

    # A greedy raw completion of "1,2,...,30," counts on for thousands of tokens: the answer cannot end on its own
    # before the signal (a chat answer may: it once did, and the run exited 0).
    counting = ",".join(str(i) for i in range(1, 31)) + ","
    process = subprocess.Popen([sys.executable, "-m", "deeproots.cli", "run", "-m", str(smollm2_path), "--raw",
                                "--temp", "0", "-n", "100000", "--ctx", "8192", counting], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "DEEPROOTS_HOME": str(tmp_path)},
                               # a shell's background job ignores SIGINT, and a child inherits that: restore Ctrl-C
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.read(1)  # the answer has begun
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr


def test_damaged_store_record_is_a_clean_error(tmp_path):
    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{not json")
    one_line_error(deeproots("inspect", "broken", home=tmp_path), 1, "is damaged", "deeproots rm broken")


def test_version_and_ls(tmp_path):
    version = deeproots("--version", home=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("deeproots ")
    listed = deeproots("ls", home=tmp_path)
    assert listed.returncode == 0 and "No models stored" in listed.stdout


def test_a_prompt_that_is_not_utf8_is_refused(tmp_path):
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(b"hi \xbc\xff there")
    one_line_error(deeproots("run", "-f", str(binary), home=tmp_path), 1, f"{binary} is not UTF-8 text",
                   "byte 0xbc at offset 3")
    result = subprocess.run([sys.executable, "-m", "deeproots.cli", "run"], stdin=open(binary, "rb"),
                            capture_output=True, env={**os.environ, "DEEPROOTS_HOME": str(tmp_path)}, timeout=300)
    assert result.returncode == 1 and b"stdin is not UTF-8 text" in result.stderr, result.stderr


def test_a_context_too_large_for_memory_is_one_line(smollm2_path, tmp_path):
    result = deeproots("run", "-m", str(smollm2_path), "-c", "100000000000", "hi", home=tmp_path)
    one_line_error(result, 1, "out of memory", "--ctx")
