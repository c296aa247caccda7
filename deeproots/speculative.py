"""Speculative decoding: guess the next k tokens cheaply, check all k in ONE forward of the model (k + 1 rows).

A sequence's drafts come from prompt lookup (the tokens that followed the latest earlier occurrence of its last
n-gram in the prompt and the output so far: vLLM's `ngram` method, llama.cpp's `lookup`) or from a small draft
model of the same vocabulary (draft.py). The model then runs the pending token and the k drafts as k + 1 rows;
row j's logits are what plain decoding would see after the first j drafts, because every kernel computes a row
the same way whatever else is in the call (row invariance) and the KV cache forgets the rejected rows exactly
(`truncate`: nothing of a rejected row stays, it is overwritten by the next step).

`verify` walks the rows in order through the sequence's own SequenceDecoder (penalties, logit bias, the
constraint mask, end tokens, stop strings, limits), so every row is prepared exactly as plain decoding would:
- greedy: a draft is kept while it is the argmax; the first other row's argmax is the token plain decoding
  gives there, so the output is identical token for token;
- temperature > 0: the rejection rule of Leviathan et al. and Chen et al.: draft x (drawn from q) is kept with
  probability min(1, p(x) / q(x)), else the token is drawn from norm(max(0, p - q)); for prompt lookup q is a
  point mass. p is the filtered distribution plain decoding draws from (sampling.distribution), so the output
  follows the same distribution, though not the same random stream.
- a constraint (JSON schema): a forbidden draft has p = 0 and is rejected. The constraint only ever consumes
  tokens that are emitted, so it has nothing to roll back.

How many drafts a sequence gets each step is chosen by a cost model (`CostModel`, `draft_lengths`): the
measured seconds of a step against its rows, and each sequence's measured acceptance rate, give the expected
tokens per second for every length; 0 (plain decoding) wins whenever speculating would lose.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import RequestError
from .generate import GenerationStep, SequenceDecoder, TokenLogprob
from .sampling import distribution, draw_batch, draw_from, logprobs_batch

SPEC_MODES = ("off", "lookup", "draft")


@dataclass(frozen=True)
class SpeculationConfig:
    mode: str = "off"  # "lookup": prompt lookup; "draft": a draft model (loaded beside the model); "off"
    draft_max: int = 8  # most drafts verified per step
    ngram_max: int = 4  # longest suffix n-gram prompt lookup matches (vLLM's prompt_lookup_max)
    ngram_min: int = 2  # shortest (prompt_lookup_min): a single token matches too often to pay
    adaptive: bool = True  # the cost model picks each step's drafts; False: always up to draft_max (tests, bench)

    def __post_init__(self) -> None:
        if self.mode not in SPEC_MODES:
            raise RequestError(f"speculation must be one of {', '.join(SPEC_MODES)}, got {self.mode!r}")
        if isinstance(self.draft_max, bool) or not isinstance(self.draft_max, int) or not 1 <= self.draft_max <= 32:
            raise RequestError(f"draft_max must be an integer between 1 and 32, got {self.draft_max!r}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise RequestError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min} and {self.ngram_max}")


def lookup_drafts(tokens: np.ndarray, limit: int, ngram_min: int, ngram_max: int) -> list[int]:
    """Up to `limit` tokens that followed the latest earlier occurrence of the longest suffix n-gram of
    tokens (T,) int64, n from ngram_max down to ngram_min; [] when none occurs."""
    length = tokens.shape[0]
    # ends of earlier windows equal to the last n tokens, each followed by at least one token: n = 1, then narrowed
    ends = np.flatnonzero(tokens[:length - 1] == tokens[-1])
    best = int(ends[-1]) if ends.size and ngram_min == 1 else None
    for n in range(2, min(ngram_max, length - 1) + 1):
        ends = ends[ends >= n - 1]
        ends = ends[tokens[ends - (n - 1)] == tokens[length - n]]
        if not ends.size:
            break
        if n >= ngram_min:
            best = int(ends[-1])  # the latest occurrence of the longest n-gram so far
    return [] if best is None else tokens[best + 1:best + 1 + limit].tolist()


class Acceptance:
    """A sequence's acceptance rate per draft token: decayed counts of trials (drafts up to and including the
    first rejected one) and successes, with a prior of one success in two trials."""

    DECAY = 0.9  # per observation: the rate follows the text as it changes (quoting, then free prose)

    def __init__(self) -> None:
        self.successes = 0.0
        self.trials = 0.0
        self.accepted = self.rejected = 0  # draft tokens verified, in total: what the usage reports

    @property
    def rate(self) -> float:
        return (self.successes + 1.0) / (self.trials + 2.0)

    def record(self, proposed: int, accepted: int) -> None:
        self.successes = self.DECAY * self.successes + accepted
        self.trials = self.DECAY * self.trials + accepted + (accepted < proposed)

    def count(self, proposed: int, accepted: int) -> None:
        """A verified step: its acceptance, and the totals reported to the user."""
        self.record(proposed, accepted)
        self.accepted += accepted
        self.rejected += proposed - accepted


class CostModel:
    """Seconds of one whole step (drafting, forward and sampling) by its rows, from measured steps.

    Each row count keeps the median of its last RECENT steps (a burst of load from another process does not move
    it); a row count measured fewer than MEASURED times is estimated from the line a + b x rows, the least-squares
    fit through the medians. Until two row counts are measured, an extra row is assumed to cost PRIOR_ROW_COST
    of a one-row step (the first verify step measures it).
    """

    PRIOR_ROW_COST = 0.05
    RECENT = 9
    MEASURED = 3

    def __init__(self) -> None:
        self.recent: dict[int, deque[float]] = {}
        self._medians: dict[int, float] = {}
        self._line: tuple[float, float] | None = None  # both recomputed after each observation, when asked

    def observe(self, rows: int, seconds: float) -> None:
        times = self.recent.setdefault(rows, deque(maxlen=self.RECENT))
        times.append(seconds)
        self._medians[rows] = statistics.median(times)
        self._line = None

    def seconds(self, rows: int) -> float:
        if len(self.recent.get(rows, ())) >= self.MEASURED:
            return self._medians[rows]
        a, b = self.line()
        return a + b * rows

    def line(self) -> tuple[float, float]:
        """(a, b): seconds of a step of n rows is a + b x n."""
        if self._line is None:
            self._line = self._fit()
        return self._line

    def _fit(self) -> tuple[float, float]:
        points = list(self._medians.items())
        if len(points) < 2:
            one = points[0][1] if points else 1.0  # no measurement: only ratios matter
            return one * (1 - self.PRIOR_ROW_COST), one * self.PRIOR_ROW_COST
        mean_rows = sum(rows for rows, _ in points) / len(points)
        mean_seconds = sum(seconds for _, seconds in points) / len(points)
        b = sum((rows - mean_rows) * (seconds - mean_seconds) for rows, seconds in points) / \
            sum((rows - mean_rows) ** 2 for rows, _ in points)
        return max(mean_seconds - b * mean_rows, 1e-9), max(b, 0.0)


def expected_tokens(rate: float, drafts: int) -> float:
    """Tokens a verify step of `drafts` drafts emits on average, each draft kept with probability `rate` while
    the ones before it were: 1 + rate + ... + rate^drafts."""
    return float(sum(rate ** i for i in range(drafts + 1)))


GAIN_MARGIN = 0.1  # drafts only where they promise 10% more tokens/s: medians carry noise, a wrong bet costs


def draft_lengths(rates: Sequence[float], limits: Sequence[int], cost: CostModel) -> list[int]:
    """Drafts for each sequence of a step that maximize the step's expected tokens per second.

    rates[i]: sequence i's acceptance rate; limits[i]: the most drafts it may take. One pass, sequence by
    sequence, each choosing the length that is best given the others' choices (plain decoding, 0, unless some
    length beats it by GAIN_MARGIN).
    """
    lengths = [0] * len(rates)
    tokens, rows = float(len(rates)), len(rates)  # the step's expected tokens and its rows: one per sequence
    for i, (rate, limit) in enumerate(zip(rates, limits)):
        best, best_speed = 0, tokens / cost.seconds(rows) * (1 + GAIN_MARGIN)
        for k in range(1, limit + 1):
            speed = (tokens - 1 + expected_tokens(rate, k)) / cost.seconds(rows + k)
            if speed > best_speed:
                best, best_speed = k, speed
        lengths[i] = best
        tokens += expected_tokens(rate, best) - 1
        rows += best
    return lengths


def verify(decoder: SequenceDecoder, logits: np.ndarray, drafts: Sequence[int],
           draft_probs: Sequence[np.ndarray] | None, room: int) -> list[GenerationStep | Exception]:
    """The tokens a verify step emits: logits (k + 1, vocab) are the model's rows for the pending token and the
    k drafts; draft_probs[j] (vocab,) the distribution drafts[j] was drawn from (None: a point mass, prompt
    lookup); `room` the cache's room before the step. Ends at the first rejected draft (its replacement is the
    last token), or with the token after the last draft, or where the sequence finishes or fails."""
    steps: list[GenerationStep | Exception] = []
    for j, row in enumerate(np.asarray(logits, dtype=np.float32)):
        try:
            prepared = decoder.prepare(row)
            draft = drafts[j] if j < len(drafts) else None
            if draft is None:
                token = draw_batch(prepared[None], [decoder.sampler])[0]
            else:
                token = _accept_or_replace(prepared, draft, None if draft_probs is None else draft_probs[j], decoder)
            step = decoder.advance(token, _logprob(decoder, row, token), room - j - 1)
        except Exception as error:  # the sequence fails here, as decode_batch reports a failed row
            steps.append(error)
            return steps
        steps.append(step)
        if step.finish_reason is not None or token != draft:
            return steps
    return steps


def _accept_or_replace(prepared: np.ndarray, draft: int, q: np.ndarray | None, decoder: SequenceDecoder) -> int:
    """The draft, or the token that replaces it (the rejection rule; greedy: the argmax)."""
    sampler = decoder.sampler
    if sampler.params.greedy:
        return draw_batch(prepared[None], [sampler])[0]
    p = distribution(prepared, sampler.params)  # (vocab,) float64
    q_draft = 1.0 if q is None else float(q[draft])
    if q_draft > 0.0 and sampler.uniform() * q_draft < p[draft]:
        return draft
    residual = p.copy() if q is None else np.maximum(p - q, 0.0)
    if q is None:
        residual[draft] = 0.0
    if not residual.any():  # p equals q (or p is the point mass on the draft): p itself is the residual
        residual = p
    return draw_from(residual, sampler.uniform())


def _logprob(decoder: SequenceDecoder, row: np.ndarray, token: int) -> TokenLogprob | None:
    if decoder.top_logprobs is None:
        return None
    value, top = logprobs_batch(row[None], [token], [decoder.top_logprobs])[0]
    return TokenLogprob(value, tuple(top))


class SequenceSpeculation:
    """One sequence's speculation: its acceptance, its draft-model cache (draft mode), and the lookup draft it
    did not verify (checked against the token plain decoding gave: prompt lookup measures its acceptance even
    while switched off)."""

    def __init__(self, draft_state=None):
        self.acceptance = Acceptance()
        self.draft_state = draft_state
        self.unverified: int | None = None
        self._tokens = np.empty(0, dtype=np.int64)  # the history as int64, grown as it grows
        self._known = 0

    def tokens(self, history: list[int]) -> np.ndarray:
        """history (the prompt and output so far, which only grows) as int64 (T,), converted once per token."""
        if len(history) > self._tokens.shape[0]:
            grown = np.empty(2 * len(history), dtype=np.int64)
            grown[:self._known] = self._tokens[:self._known]
            self._tokens = grown
        self._tokens[self._known:len(history)] = history[self._known:]
        self._known = len(history)
        return self._tokens[:self._known]


@dataclass
class Proposal:
    drafts: list[int]  # the tokens to verify after the pending one
    probs: list[np.ndarray] | None  # the distribution each was drawn from; None: point masses (lookup, greedy)


class Speculator:
    """Drafts for the sequences of a step, and what their verification teaches: one per model (engine or API).

    `draft` is a draft.DraftModel in "draft" mode.
    """

    BASELINE_STEPS = 3
    PROBE_EVERY = 32

    def __init__(self, config: SpeculationConfig, draft=None):
        if (config.mode == "draft") != (draft is not None):
            raise RequestError("speculation 'draft' needs a draft model (--draft-model), and only it does")
        self.config = config
        self.draft = draft
        self.cost = CostModel()
        self.accepted = self.rejected = 0  # draft tokens of every sequence so far (`--verbose`)
        self.steps = 0
        self.drafted_probe_due = False  # a step with every sequence's drafts is owed to the cost model

    def start(self, prompt_ids: Sequence[int]) -> SequenceSpeculation:
        """A sequence's state, once its prompt has run (a draft model runs it too, outside the timed steps)."""
        return SequenceSpeculation(self.draft.start(prompt_ids) if self.draft else None)

    def propose(self, states: Sequence[SequenceSpeculation], decoders: Sequence[SequenceDecoder],
                rooms: Sequence[int]) -> list[Proposal]:
        """Drafts for each sequence whose last sampled token (the end of its decoder's history) runs next;
        rooms[i] is its cache's room before the step."""
        limits = [max(0, min(self.config.draft_max, room - 1, decoder.max_tokens - decoder.produced - 1))
                  for decoder, room in zip(decoders, rooms)]
        rates = [state.acceptance.rate for state in states]
        if self.draft is None:
            found = [lookup_drafts(state.tokens(decoder.history), limit, self.config.ngram_min, self.config.ngram_max)
                     if limit else [] for state, decoder, limit in zip(states, decoders, limits)]
            lengths = self._lengths(rates, [len(drafts) for drafts in found])
            for state, drafts, k in zip(states, found, lengths):
                state.unverified = drafts[0] if drafts and not k else None
            return [Proposal(drafts[:k], None) for drafts, k in zip(found, lengths)]
        lengths = self._lengths(rates, limits)
        return self.draft.propose([state.draft_state for state in states], decoders, lengths)

    def _lengths(self, rates: list[float], limits: list[int]) -> list[int]:
        """Each sequence's drafts this step. The cost model needs both kinds of step measured now and then: a step
        of as many sequences without drafts runs whenever fewer than BASELINE_STEPS of them are measured, and
        every PROBE_EVERY steps (its cost is only that of plain decoding). With prompt lookup, whose drafts cost
        nothing to make, the next step after half-way between that has drafts takes all of them whatever the model
        says, so that one slow verify step (another process's burst of load) cannot switch drafting off for good."""
        self.steps += 1
        if not self.config.adaptive:
            return list(limits)
        if len(self.cost.recent.get(len(rates), ())) < self.BASELINE_STEPS or self.steps % self.PROBE_EVERY == 0:
            return [0] * len(rates)
        self.drafted_probe_due |= self.draft is None and self.steps % self.PROBE_EVERY == self.PROBE_EVERY // 2
        if self.drafted_probe_due and any(limits):
            self.drafted_probe_due = False
            return list(limits)
        return draft_lengths(rates, limits, self.cost)

    def verified(self, state: SequenceSpeculation, proposal: Proposal, steps: Sequence[object]) -> int:
        """After a verify step that emitted `steps`: how many drafts were kept; updates the acceptance."""
        kept = 0
        for step, draft in zip(steps, proposal.drafts):
            if not isinstance(step, GenerationStep) or step.token_id != draft:
                break
            kept += 1
        state.acceptance.count(len(proposal.drafts), kept)
        self.accepted += kept
        self.rejected += len(proposal.drafts) - kept
        if self.draft is not None:
            self.draft.keep(state.draft_state, len(proposal.drafts), kept)
        return kept

    def plain(self, state: SequenceSpeculation, token: int) -> None:
        """After a plain decoding step that sampled `token`."""
        if state.unverified is not None:
            state.acceptance.record(1, int(token == state.unverified))
        elif self.draft is not None:
            state.acceptance.record(0, 0)  # unobserved: the rate drifts back to the prior, so drafting is retried
        state.unverified = None

    def verify(self, decoder: SequenceDecoder, logits: np.ndarray, proposal: Proposal,
               room: int) -> list[GenerationStep | Exception]:
        return verify(decoder, logits, proposal.drafts, proposal.probs, room)

    def advance(self, model, decoder: SequenceDecoder, cache, state: SequenceSpeculation) -> list[GenerationStep]:
        """One step of a single sequence (generate.generate): its last token and drafts through `model`, the
        rejected rows dropped from `cache`; the steps emitted, and an exception last where the sequence failed."""
        started = time.perf_counter()
        room, offset = cache.room(), cache.offset
        proposal = self.propose([state], [decoder], [room])[0]
        tokens = np.asarray([decoder.history[-1], *proposal.drafts], dtype=np.int64)  # (k + 1,)
        logits = model.forward(tokens, cache, all_logits=True)  # (k + 1, vocab)
        if proposal.drafts:
            steps = self.verify(decoder, logits, proposal, room)
            cache.truncate(offset + len(steps))  # the rows of the pending token and the kept drafts
            self.verified(state, proposal, steps)
        else:
            steps = [decoder.step(logits[-1], cache.room())]
            self.plain(state, steps[0].token_id)
        self.cost.observe(len(tokens), time.perf_counter() - started)
        return steps
