"""`deeproots run --spec ...` as a user runs it: the same greedy text as without, the drafts in --verbose, and
clear errors for options that do not go together."""

import pytest
from test_cli import deeproots

pytestmark = pytest.mark.slow  # CLI processes on the real model

# Code to give back whole: the answer copies the prompt whatever the CPU kernels (a list to repeat was answered in
# other words on AVX2 builds, with no draft accepted).
PROMPT = ("Fix the typo in this code and print it whole:\n"
          "def add_numbers(first, second):\n    reslt = first + second\n    return reslt")


def test_lookup_gives_the_plain_text_and_reports_its_drafts(smollm2_path):
    common = ["run", "-m", str(smollm2_path), "--temperature", "0", "--max-tokens", "64", "--verbose", PROMPT]
    plain, drafted = deeproots(*common), deeproots(*common, "--spec", "lookup", "--draft-max", "4")
    assert plain.returncode == drafted.returncode == 0, drafted.stderr
    assert drafted.stdout == plain.stdout
    reported = next(line for line in drafted.stderr.splitlines() if line.startswith("speculation (lookup)"))
    assert int(reported.split(": ")[1].split()[0]) > 0  # "speculation (lookup): N draft tokens accepted, ..."
    assert "speculation" not in plain.stderr


@pytest.mark.parametrize("options, message", [
    (["--spec", "draft"], "needs a draft model"),
    (["--draft-model", "smollm2-135m"], "only used with speculation 'draft'"),
    (["--spec", "lookup", "--draft-max", "0"], "draft_max must be"),
])
def test_options_that_do_not_go_together_are_clean_errors(smollm2_path, options, message):
    result = deeproots("run", "-m", str(smollm2_path), "--max-tokens", "2", *options, "Hi")
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
