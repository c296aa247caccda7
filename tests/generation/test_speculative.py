"""Speculative decoding (speculative.py, draft.py): greedy output identical token for token to plain decoding on
the real models for every draft length, the rejection rule distribution-exact (chi-square), and the pieces."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deeproots.cache.kv import KVCache
from deeproots.errors import RequestError
from deeproots.generate import SequenceDecoder, generate
from deeproots.sampling import SamplingParams, distribution, draw_from, prepare_logits
from deeproots.speculative import (Acceptance, CostModel, SpeculationConfig, Speculator, draft_lengths,
                                   expected_tokens, lookup_drafts, verify)

GREEDY = SamplingParams(temperature=0.0)

PASSAGE = ("The lighthouse keeper climbed the hundred and twelve steps every evening at dusk. At the top he wiped "
           "the great lens with a soft cloth, lit the lamp, and wrote the time in a leather logbook that had "
           "belonged to his grandfather.")
CODE = '''def average(values):
    total = 0
    for value in values:
        total = total + value
    return total / len(values)
'''
# Input-grounded prompts: the answer quotes or edits the prompt, so prompt lookup's drafts are often right.
SMOLLM2_CHATS = [
    f"Here is a text:\n\n{PASSAGE}\n\nRepeat the text above word for word.",
    f"Rename the function `average` to `mean` in this code and show the whole code:\n\n{CODE}",
]
GEMMA_RAW = f"{PASSAGE}\n\nThe same text, copied exactly:\n\n{PASSAGE[:40]}"


def token_ids(net, tokenizer, ids, cache: KVCache, params, max_tokens, speculator=None) -> list[int]:
    return [step.token_id for step in generate(net, tokenizer, ids, cache, params, max_tokens=max_tokens,
                                               speculator=speculator)]


def check_identical_for_every_draft_length(model, ids: list[int], max_tokens: int) -> None:
    """Greedy with prompt lookup (always drafting what it finds: adaptive off) against plain decoding."""
    plain = token_ids(model.net, model.tokenizer, ids, model.new_cache(), GREEDY, max_tokens)
    for draft_max in range(1, 9):
        speculator = Speculator(SpeculationConfig("lookup", draft_max, adaptive=False))
        spec = token_ids(model.net, model.tokenizer, ids, model.new_cache(), GREEDY, max_tokens, speculator)
        assert spec == plain, f"draft_max={draft_max}: first difference at {next_difference(spec, plain)}"
        assert speculator.accepted > 0, f"draft_max={draft_max}: no draft was accepted, nothing was tested"


def next_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --- the pieces ----------------------------------------------------------------------------------------------
def brute_force_lookup(tokens: list[int], limit: int, ngram_min: int, ngram_max: int) -> list[int]:
    """The definition, written as plainly as possible: longest suffix n-gram first, its latest earlier start."""
    for n in range(ngram_max, ngram_min - 1, -1):
        if n >= len(tokens):
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + limit]
    return []


def test_lookup_drafts_match_the_definition_on_random_token_streams():
    rng = np.random.default_rng(0)
    for _ in range(500):
        tokens = rng.integers(0, 4, size=int(rng.integers(1, 40))).tolist()
        limit, ngram_min = int(rng.integers(1, 9)), int(rng.integers(1, 4))
        ngram_max = ngram_min + int(rng.integers(0, 3))
        assert lookup_drafts(np.asarray(tokens, dtype=np.int64), limit, ngram_min, ngram_max) == \
            brute_force_lookup(tokens, limit, ngram_min, ngram_max)


def test_lookup_drafts_continue_a_quoted_span():
    tokens = [5, 1, 2, 3, 4, 6, 7, 9, 1, 2, 3]
    assert lookup_drafts(np.asarray(tokens), 3, 2, 4) == [4, 6, 7]
    assert lookup_drafts(np.asarray([1, 2, 3]), 3, 2, 4) == []


@pytest.mark.parametrize("fields", [dict(mode="eagle"), dict(draft_max=0), dict(draft_max=33), dict(draft_max=2.5),
                                    dict(ngram_min=3, ngram_max=2)])
def test_bad_speculation_settings_are_request_errors(fields):
    with pytest.raises(RequestError):
        SpeculationConfig(**{"mode": "lookup", **fields})


def test_expected_tokens_is_the_truncated_geometric_mean():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    rng = np.random.default_rng(1)
    kept = [np.argmin(np.append(rng.random(4) < 0.7, False)) for _ in range(20000)]  # first rejection of 4
    assert abs(np.mean(kept) + 1 - expected_tokens(0.7, 4)) < 0.03


def test_cost_model_switches_drafts_off_when_they_lose():
    cost = CostModel()
    for rows in (1, 2, 5, 9):
        cost.observe(rows, 0.010 + 0.004 * rows)  # a verify row costs 40% of a one-row step
    a, b = cost.line()
    assert abs(a - 0.010) < 1e-9 and abs(b - 0.004) < 1e-9
    assert draft_lengths([0.05], [8], cost) == [0]  # drafts almost always rejected: plain decoding
    assert draft_lengths([0.95], [8], cost)[0] >= 4  # almost always kept: long drafts
    assert draft_lengths([0.95, 0.95], [0, 3], cost) == [0, 3]  # capped by what each may take
    dear = CostModel()
    for rows in (1, 5, 9):
        dear.observe(rows, 0.010 * rows)  # every row (a draft model's drafting included) costs a whole step
    assert draft_lengths([0.95], [8], dear) == [0]


def test_one_slow_verify_step_does_not_switch_prompt_lookup_off_for_good():
    """A verify step timed during another process's burst of load makes drafts look like a loss; a drafted step
    half-way between the plain probes measures them again (without it, every step of the round stayed plain)."""
    speculator = Speculator(SpeculationConfig("lookup", 4))
    for _ in range(Speculator.BASELINE_STEPS):
        speculator.cost.observe(1, 0.010)
    speculator.cost.observe(5, 0.500)  # one step of 5 rows timed at 50 one-row steps
    assert draft_lengths([0.95], [4], speculator.cost) == [0]
    limits = [4] * Speculator.PROBE_EVERY
    limits[Speculator.PROBE_EVERY // 2 - 1] = 0  # the half-way step found no drafts: the next one is the probe
    lengths = [speculator._lengths([0.95], [limit])[0] for limit in limits]
    assert lengths[Speculator.PROBE_EVERY // 2] == 4 and lengths.count(0) == Speculator.PROBE_EVERY - 1


def test_acceptance_rate_follows_the_observations():
    acceptance = Acceptance()
    assert acceptance.rate == 0.5
    for _ in range(30):
        acceptance.count(4, 4)
    assert acceptance.rate > 0.9 and acceptance.accepted == 120 and acceptance.rejected == 0
    for _ in range(30):
        acceptance.count(4, 0)
    assert acceptance.rate < 0.25 and acceptance.rejected == 120  # one trial a round: slower to fall


# --- greedy: identical to plain decoding on the real models ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("message", SMOLLM2_CHATS, ids=["quote", "edit-code"])
def test_greedy_lookup_is_identical_to_plain_decoding_smollm2(smollm2, message):
    ids = smollm2.apply_chat_template([{"role": "user", "content": message}], tokenize=True)
    check_identical_for_every_draft_length(smollm2, ids, max_tokens=72)


@pytest.mark.slow
def test_greedy_lookup_is_identical_to_plain_decoding_gemma3(gemma3_path):
    import deeproots

    gemma = deeproots.load(gemma3_path, context=512)
    check_identical_for_every_draft_length(gemma, gemma.tokenize(GEMMA_RAW), max_tokens=40)


@pytest.mark.slow
def test_greedy_lookup_is_identical_with_a_q8_0_kv_cache(smollm2):
    """Rejected rows of a q8_0 cache are dropped as exactly as those of an f16 one."""
    ids = smollm2.apply_chat_template([{"role": "user", "content": SMOLLM2_CHATS[0]}], tokenize=True)
    plain = token_ids(smollm2.net, smollm2.tokenizer, ids, smollm2.new_cache(kv_type="q8_0"), GREEDY, 64)
    speculator = Speculator(SpeculationConfig("lookup", 5, adaptive=False))
    assert token_ids(smollm2.net, smollm2.tokenizer, ids, smollm2.new_cache(kv_type="q8_0"), GREEDY, 64,
                     speculator) == plain
    assert speculator.accepted > 0


@pytest.mark.slow
def test_adaptive_lookup_through_the_api_is_identical_and_reports_drafts(smollm2_path, smollm2):
    import deeproots

    model = deeproots.load(smollm2_path, context=2048, speculation="lookup")
    messages = [{"role": "user", "content": SMOLLM2_CHATS[1]}]
    assert model.chat(messages, max_tokens=64, temperature=0.0) == smollm2.chat(messages, max_tokens=64,
                                                                                temperature=0.0)
    assert model.speculator.accepted > 0


# --- sampling: the rejection rule draws from the distribution plain decoding draws from -----------------------
def chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's test of observed counts against probabilities; tokens expected < 5 times pooled into one bin."""
    import torch

    n = counts.sum()
    big = probs * n >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(probs[big] * n, probs[~big].sum() * n)
    keep = expected > 0
    statistic = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


@pytest.fixture(scope="module")
def real_rows(smollm2):
    """Two rows of real logits (2, vocab) of the default model after a real prompt, and the prompt's ids."""
    ids = smollm2.tokenize("The three most common colours of cars are")
    cache = smollm2.new_cache()
    logits = smollm2.net.forward(np.asarray(ids + [4], dtype=np.int64), cache, all_logits=True)[-2:]
    return logits, ids


# Real filters, a penalty over the history and a bias: p is what plain decoding draws from after all of them.
FILTERED = SamplingParams(temperature=0.9, top_k=30, top_p=0.95, min_p=0.02, repeat_penalty=1.3,
                          logit_bias={504: 2.0})
TRIALS = 6000
# Each check fails when its p-value is under 1e-3: a correct implementation fails it with probability 0.1% per
# check on a fresh seed (the seeds are fixed, so a given run passes or fails the same way every time).
P_FLOOR = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("proposer", ["draft-distribution", "point-mass"])
def test_rejection_rule_is_distribution_exact(smollm2, real_rows, proposer):
    logits, history = real_rows
    p = distribution(prepare_logits(logits[0], history, FILTERED), FILTERED)  # (vocab,)
    # q: a draft model's distribution, here the same row much hotter and unfiltered (it proposes tokens p never
    # would); or prompt lookup's point mass on the second most likely token.
    q = distribution(logits[0], SamplingParams(temperature=1.8, top_k=0, top_p=1.0, min_p=0.0))
    point = int(np.argsort(-p)[1])
    rng = np.random.default_rng(7)
    counts = np.zeros_like(p)
    for trial in range(TRIALS):
        decoder = SequenceDecoder(smollm2.tokenizer, history, replace(FILTERED, seed=trial), max_tokens=8)
        if proposer == "point-mass":
            steps = verify(decoder, logits, [point], None, room=100)
        else:
            steps = verify(decoder, logits, [draw_from(q, rng.random())], [q], room=100)
        counts[steps[0].token_id] += 1
    assert counts[p == 0].sum() == 0, "a token the filters remove was emitted"
    assert chi_square_p_value(counts, p) > P_FLOOR


@pytest.mark.slow
def test_chi_square_check_catches_a_wrong_rule(smollm2, real_rows):
    """The check has power: accepting every draft (no rejection rule) is caught."""
    logits, history = real_rows
    p = distribution(prepare_logits(logits[0], history, FILTERED), FILTERED)
    q = distribution(logits[0], SamplingParams(temperature=1.8, top_k=0, top_p=1.0, min_p=0.0))
    rng = np.random.default_rng(7)
    counts = np.zeros_like(p)
    for _ in range(TRIALS):
        counts[draw_from(q, rng.random())] += 1  # what a broken verify that keeps every draft emits
    assert chi_square_p_value(counts, p) < P_FLOOR


def test_sequence_tokens_follow_a_growing_history():
    from deeproots.speculative import SequenceSpeculation

    state, history = SequenceSpeculation(), [3, 1, 4]
    for token in [1, 5, 9, 2, 6, 5, 3, 5]:
        assert state.tokens(history).tolist() == history
        history.append(token)
    assert state.tokens(history).tolist() == history
