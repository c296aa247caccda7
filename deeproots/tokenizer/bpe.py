"""gpt2-style byte-level BPE (tokenizer.ggml.model = "gpt2"): Llama 3, Qwen2, SmolLM, GPT-2, StarCoder ...

Text is cut into words by the regexes tokenizer.ggml.pre names, each word is spelled in GPT-2's
byte alphabet (every byte is one printable character), and the file's merges join the letters.
The regexes per pre-tokenizer name are llama.cpp's (llm_tokenizer_bpe in src/llama-vocab.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Mapping

import numpy as np
from tokenizers import Regex, models, pre_tokenizers

from deeproots.errors import ModelFormatError, UnsupportedModelError

from .backend import BackendParts
from .vocab import Vocab

# GPT-2's regex, the one HF's ByteLevel pre-tokenizer applies when use_regex is set.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp spells the case-insensitive contractions out: (?i:) would also fold e.g. U+017F to "s".
CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tiktoken's o200k_base (gpt-4o, gpt-oss): a word is an upper-case run then a lower-case one, or the reverse, with
# its contraction as a suffix; llama.cpp rewrites the letter classes for std::regex, which has no \p{Lu}.
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_O200K = "|".join((r"[^\r\n\p{L}\p{N}]?" + _UPPER + "*" + _LOWER + "+" + CONTRACTIONS + "?",
                   r"[^\r\n\p{L}\p{N}]?" + _UPPER + "+" + _LOWER + "*" + CONTRACTIONS + "?",
                   r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"))


@dataclass(frozen=True)
class PreTokenizer:
    splits: tuple[str, ...]      # regexes applied in turn, each cutting the pieces the previous one left
    ignore_merges: bool = False  # a word that is itself a token is taken whole (llama3)
    add_bos: bool = False        # llama.cpp's choice when the file has no tokenizer.ggml.add_bos_token


_LLAMA3_FAMILY = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo"), PreTokenizer((GPT2,))),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _LLAMA3_FAMILY),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), PreTokenizer((_QWEN2,))),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"),
                    PreTokenizer((r"\p{N}", GPT2))),
    "gpt-4o": PreTokenizer((_O200K,), ignore_merges=True),  # tiktoken takes a word that is a token whole
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
}


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's spelling of bytes: printable Latin-1 bytes stand for themselves, the rest get U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    alphabet = {chr(b): b for b in printable}
    alphabet.update((chr(256 + n), b) for n, b in enumerate(others))
    return alphabet


_BYTE_OF_CHAR = _byte_alphabet()
_OUTSIDE = 256  # the "byte" of a char that is no letter of the alphabet
# Code point -> the byte it spells, for every code point up to the alphabet's last letter; above: _OUTSIDE.
_BYTE_OF_CODE = np.full(max(map(ord, _BYTE_OF_CHAR)) + 1, _OUTSIDE, dtype=np.uint16)
_BYTE_OF_CODE[[ord(char) for char in _BYTE_OF_CHAR]] = list(_BYTE_OF_CHAR.values())


class ByteLevelBPE:
    default_ids: dict[str, int] = {}
    add_space_prefix = False

    def __init__(self, pre: PreTokenizer, model: models.BPE):
        self.pre = pre
        self.model = model  # the Rust BPE model, built (and its merges checked) while the metadata is read
        self.add_bos_default = pre.add_bos

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], vocab: Vocab) -> ByteLevelBPE:
        name = metadata.get("tokenizer.ggml.pre", "default")  # llama.cpp's fallback for old files
        pre = PRE_TOKENIZERS.get(name) if isinstance(name, str) else None
        if pre is None:
            raise UnsupportedModelError(
                f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported; supported: {', '.join(PRE_TOKENIZERS)}")
        return cls(pre, _bpe_model(vocab, _parse_merges(metadata.get("tokenizer.ggml.merges")), pre))

    def backend_parts(self, vocab: Vocab) -> BackendParts:
        splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in self.pre.splits]
        spell_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return BackendParts(self.model, None, pre_tokenizers.Sequence([*splits, spell_bytes]))

    @staticmethod
    def normal_token_bytes(texts: list[str]) -> list[bytes]:
        """Each token's bytes: its spelling read back through the byte alphabet, or, for a token spelled outside
        the alphabet, its own UTF-8. One table lookup over the whole vocabulary's code points, then slices."""
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)  # token i keeps its offsets
        spelled = _BYTE_OF_CODE[np.minimum(codes, len(_BYTE_OF_CODE) - 1)]
        spelled[codes >= len(_BYTE_OF_CODE)] = _OUTSIDE
        data = spelled.astype(np.uint8).tobytes()  # one byte per char
        ends = list(accumulate(map(len, texts)))
        pieces = [data[start:end] for start, end in zip([0, *ends], ends)]
        for token in set(np.searchsorted(ends, np.flatnonzero(spelled == _OUTSIDE), side="right").tolist()):
            pieces[token] = texts[token].encode()
        return pieces


def _parse_merges(merges: Any) -> list[tuple[str, str]]:
    """The file's merges "left right", highest priority first, as (left, right) pairs."""
    field = "tokenizer.ggml.merges"
    if merges is None:
        raise ModelFormatError("a gpt2 (byte-level BPE) vocabulary needs its merges", field=field)
    if not isinstance(merges, list) or not all(isinstance(merge, str) for merge in merges):
        raise ModelFormatError("the merges must be an array of strings", field=field)
    if len(set(merges)) < len(merges):  # a repeated merge keeps its first rank, as in llama.cpp
        merges = list(dict.fromkeys(merges))
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]  # one C-level split each: 5x a find and two slices
    # As llama.cpp, the first part is never empty: a merge starting with a space splits at its next space.
    for rank in [rank for rank, pair in enumerate(pairs) if len(pair) != 2 or not pair[0]]:
        cut = merges[rank].find(" ", 1)
        if cut < 0:
            raise ModelFormatError(f"merge {rank} is {merges[rank]!r}, not two tokens separated by a space",
                                   field=field)
        pairs[rank] = (merges[rank][:cut], merges[rank][cut + 1:])
    return pairs


def _bpe_model(vocab: Vocab, merges: list[tuple[str, str]], pre: PreTokenizer) -> models.BPE:
    """The Rust BPE model; it refuses a merge whose parts, or whose joined token, the vocabulary lacks."""
    try:
        return models.BPE(vocab.ids, merges, ignore_merges=pre.ignore_merges)
    except Exception as exc:  # the Rust builder's error names the token
        raise ModelFormatError(f"a merge joins or makes a token the vocabulary lacks: {exc}",
                               field="tokenizer.ggml.merges") from exc
