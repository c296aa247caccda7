"""gpt2-style byte-level BPE (tokenizer.ggml.model = "gpt2"): Llama 3, Qwen2, SmolLM, GPT-2, StarCoder ...

Text is cut into words by the regexes tokenizer.ggml.pre names, each word is spelled in GPT-2's
byte alphabet (every byte is one printable character), and the file's merges join the letters.
The regexes per pre-tokenizer name are llama.cpp's (llm_tokenizer_bpe in src/llama-vocab.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

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
# str.translate table from GPT-2's spelling to latin-1 (one char per byte). A byte < 256 that is no letter of the
# alphabet becomes U+FFFF, which latin-1 cannot encode, as any char above U+00FF outside it stays: both mean the
# token is spelled outside the alphabet.
_TO_LATIN1 = {**{ord(char): chr(byte) for char, byte in _BYTE_OF_CHAR.items()},
              **{byte: "\uffff" for byte in range(256) if chr(byte) not in _BYTE_OF_CHAR}}


class ByteLevelBPE:
    default_ids: dict[str, int] = {}
    add_space_prefix = False

    def __init__(self, pre: PreTokenizer, merges: list[tuple[str, str]]):
        self.pre = pre
        self.merges = merges
        self.add_bos_default = pre.add_bos

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], vocab: Vocab) -> ByteLevelBPE:
        name = metadata.get("tokenizer.ggml.pre", "default")  # llama.cpp's fallback for old files
        pre = PRE_TOKENIZERS.get(name) if isinstance(name, str) else None
        if pre is None:
            raise UnsupportedModelError(
                f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported; supported: {', '.join(PRE_TOKENIZERS)}")
        return cls(pre, _parse_merges(metadata.get("tokenizer.ggml.merges"), vocab))

    def backend_parts(self, vocab: Vocab) -> BackendParts:
        model = models.BPE(vocab.ids, self.merges, ignore_merges=self.pre.ignore_merges)
        splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in self.pre.splits]
        spell_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return BackendParts(model, None, pre_tokenizers.Sequence([*splits, spell_bytes]))

    @staticmethod
    def normal_token_bytes(text: str) -> bytes:
        try:
            return text.translate(_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:  # spelled outside the byte alphabet: the token stands for its own UTF-8
            return text.encode()


def _parse_merges(merges: Any, vocab: Vocab) -> list[tuple[str, str]]:
    field = "tokenizer.ggml.merges"
    if merges is None:
        raise ModelFormatError("a gpt2 (byte-level BPE) vocabulary needs its merges", field=field)
    if not isinstance(merges, list):
        raise ModelFormatError("the merges must be an array of strings", field=field)
    ids, tokens = vocab.ids, vocab.tokens
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    for rank, merge in enumerate(merges):
        cut = merge.find(" ", 1) if isinstance(merge, str) else -1  # as llama.cpp: the first part is never empty
        if cut < 0:
            raise ModelFormatError(f"merge {rank} is {merge!r}, not two tokens separated by a space", field=field)
        left, right = merge[:cut], merge[cut + 1:]
        left_id, right_id = ids.get(left), ids.get(right)
        if left_id is None or right_id is None or left + right not in ids:
            raise ModelFormatError(f"merge {rank} ({merge!r}) joins or makes a token the vocabulary lacks",
                                   field=field)
        # The vocabulary's own strings, not the slices: ~10^5 fewer objects alive until the backend is built.
        append((tokens[left_id], tokens[right_id]))
    if len(set(merges)) < len(merges):  # a repeated merge keeps its first rank, as in llama.cpp
        pairs = list(dict.fromkeys(pairs))
    return pairs
