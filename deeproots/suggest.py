"""Did-you-mean for misspelt command and model names."""

from __future__ import annotations

from typing import Iterable


def did_you_mean(word: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """" (did you mean 'x'?)" for the candidate closest to `word`, or "" when none is close."""
    import difflib  # only when a name is unknown

    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
