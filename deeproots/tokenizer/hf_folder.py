"""GGUF tokenizer metadata from a Hugging Face folder, as llama.cpp's convert_hf_to_gguf.py writes it.

tokenizer.json holds the vocabulary, merges and text pipeline; tokenizer_config.json (or
special_tokens_map.json) names the special tokens; the chat templates come from chat_template.jinja and
additional_chat_templates/, else tokenizer_config.json, the precedence transformers uses. Two models are read:

- byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): tokenizer.ggml.model "gpt2" with the merges, and
  tokenizer.ggml.pre named after the regexes the pre-tokenizer cuts text with;
- BPE with byte_fallback over "▁"-spaced pieces (converted SentencePiece: Llama 2, Mistral, Gemma):
  tokenizer.ggml.model "llama", with scores from the merge ranks, as llama.cpp joins pieces best score first.

add_bos_token and add_eos_token are always written, so BOS/EOS follow the folder rather than llama.cpp's
per-model defaults. As in llama.cpp, added tokens' lstrip/rstrip/single_word flags and an NFC normalizer
are not kept, and where HF's Metaspace pre-tokenizer departs from sentencepiece (no "▁" put before a text
already starting with one; with prepend_scheme "first", none after an added token) we follow sentencepiece.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.formats.hf_folder import read_json

from .bpe import CONTRACTIONS, GPT2, PRE_TOKENIZERS
from .chat import TEMPLATE_KEY
from .spm import SPACE
from .vocab import BYTE_TOKEN, TokenType

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MODEL_CONFIG_FILE = "config.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
MAX_JSON_BYTES = 1 << 30
MAX_VOCAB = 1 << 24  # the GGUF reader's longest array

# tokenizer.json spells the contractions case-insensitively; llama.cpp's regexes spell the cases out.
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# The tokenizer.ggml.pre names a tokenizer.json pre-tokenizer can be recognised as, in order of preference.
DETECTABLE_PRE_TOKENIZERS = ("gpt-2", "llama-bpe", "smaug-bpe", "qwen2", "smollm", "gpt-4o")
_SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                 "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id"}


def tokenizer_metadata_from_hf(folder: str) -> dict[str, Any]:
    """The tokenizer.ggml.* and tokenizer.chat_template* metadata of the tokenizer in a Hugging Face folder."""
    tokenizer = _read_json(folder, TOKENIZER_FILE, required=True)
    config = _read_json(folder, CONFIG_FILE)
    names = {**_read_json(folder, SPECIAL_TOKENS_FILE), **config}  # tokenizer_config.json wins
    model = tokenizer.get("model")
    if not isinstance(model, dict):
        raise ModelFormatError(f"{TOKENIZER_FILE} has no model object", field=f"{TOKENIZER_FILE}: model")
    kind = model.get("type")
    if kind != "BPE":
        raise UnsupportedModelError(
            f"{TOKENIZER_FILE} has a {kind!r} model; supported: BPE, byte-level (GPT-2, Llama 3, Qwen2) or "
            "with byte_fallback (SentencePiece-style: Llama 2, Mistral, Gemma)")
    texts, added = _texts(tokenizer, model)
    ids = {text: token_id for token_id, text in texts.items()}
    pairs = _merge_pairs(model.get("merges", []))
    sentencepiece = bool(model.get("byte_fallback"))
    size = max(max(texts) + 1, _model_vocab_size(folder))
    tokens, types = _tokens_and_types(texts, added, size, sentencepiece)
    if sentencepiece:
        metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                    "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                    "tokenizer.ggml.scores": _scores(pairs, ids, size),
                    "tokenizer.ggml.add_space_prefix": _space_prefix(tokenizer)}
    else:
        if tokenizer.get("normalizer") not in (None, {"type": "NFC"}):
            raise UnsupportedModelError(f"the {_describe(tokenizer['normalizer'])} normalizer of a byte-level "
                                        f"{TOKENIZER_FILE} is not supported")
        metadata = {"tokenizer.ggml.model": "gpt2",
                    "tokenizer.ggml.pre": _byte_level_pre(tokenizer.get("pre_tokenizer"), model),
                    "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                    "tokenizer.ggml.merges": _merge_strings(pairs)}
    return {**metadata, **_special_tokens(names, model, tokenizer.get("post_processor"), ids),
            **_chat_templates(folder, config)}


def _read_json(folder: str, name: str, *, required: bool = False) -> dict[str, Any]:
    """The file's JSON object; {} for a missing optional file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if required:
            raise ModelFormatError(f"{name} is missing from {folder!r}; it is needed to tokenize text", field=name)
        return {}
    return read_json(path, MAX_JSON_BYTES)


def _model_vocab_size(folder: str) -> int:
    """config.json's vocab_size (the embedding rows): llama.cpp pads the vocabulary up to it."""
    config = _read_json(folder, MODEL_CONFIG_FILE)
    text_config = config.get("text_config")
    size = config.get("vocab_size", text_config.get("vocab_size") if isinstance(text_config, dict) else None)
    return size if _is_id(size) else 0


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_VOCAB


def _texts(tokenizer: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[dict[int, str], dict[int, dict]]:
    """Token id -> text over the vocabulary and the added tokens, and the added tokens by id."""
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ModelFormatError("the vocabulary must be a non-empty object of token -> id",
                               field=f"{TOKENIZER_FILE}: model.vocab")
    texts: dict[int, str] = {}
    for text, token_id in vocab.items():
        if not _is_id(token_id) or token_id in texts:
            raise ModelFormatError(f"token {text!r} has id {token_id!r}, not a fresh id below {MAX_VOCAB}",
                                   field=f"{TOKENIZER_FILE}: model.vocab")
        texts[token_id] = text
    added_tokens = tokenizer.get("added_tokens", [])
    if not isinstance(added_tokens, list):
        raise ModelFormatError("expected a list", field=f"{TOKENIZER_FILE}: added_tokens")
    added = {}
    for index, entry in enumerate(added_tokens):
        if not (isinstance(entry, dict) and _is_id(entry.get("id")) and isinstance(entry.get("content"), str)
                and entry["content"]):
            raise ModelFormatError(f"added token {index} is {entry!r}, not an object with an id and a content",
                                   field=f"{TOKENIZER_FILE}: added_tokens")
        texts[entry["id"]] = entry["content"]  # an added token's content wins, as in HF
        added[entry["id"]] = entry
    return texts, added


def _tokens_and_types(texts: Mapping[int, str], added: Mapping[int, dict], size: int,
                      sentencepiece: bool) -> tuple[list[str], np.ndarray]:
    """llama.cpp's token list: ids without a token become [PADn] (unused), added tokens control or user-defined."""
    tokens = []
    types = np.full(size, TokenType.NORMAL, dtype=np.int32)
    for token_id in range(size):
        text = texts.get(token_id)
        if text is None:
            text, types[token_id] = f"[PAD{token_id}]", TokenType.UNUSED
        elif token_id in added:
            if added[token_id].get("special") or _looks_special(text):
                types[token_id] = TokenType.CONTROL
            else:
                types[token_id] = TokenType.USER_DEFINED
                if sentencepiece:  # llama.cpp matches user-defined tokens in the raw text, spaces unescaped
                    text = text.replace(SPACE, " ")
        elif sentencepiece and BYTE_TOKEN.fullmatch(text):
            types[token_id] = TokenType.BYTE
        tokens.append(text)
    return tokens, types


def _looks_special(text: str) -> bool:
    """Added tokens llama.cpp makes control although some models forget to mark them special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _merge_pairs(merges: Any) -> list[tuple[str, str]]:
    """(left, right) per merge, from "left right" strings (the old format) or [left, right] lists."""
    field = f"{TOKENIZER_FILE}: model.merges"
    if not isinstance(merges, list):
        raise ModelFormatError("expected a list of merges", field=field)
    pairs = []
    for rank, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise ModelFormatError(f"merge {rank} is {merge!r}, not two tokens", field=field)
        pairs.append((parts[0], parts[1]))
    return pairs


def _merge_strings(pairs: list[tuple[str, str]]) -> list[str]:
    for left, right in pairs:
        if " " in left or " " in right:
            raise UnsupportedModelError(f"merge ({left!r}, {right!r}) has a space inside a token, which GGUF's "
                                        "\"left right\" merge strings cannot hold")
    return [f"{left} {right}" for left, right in pairs]


def _scores(pairs: list[tuple[str, str]], ids: Mapping[str, int], size: int) -> np.ndarray:
    """Each token scores minus the rank of the first merge making it, so llama.cpp's best-score-first joining
    follows the merge order; tokens no merge makes (characters, bytes, specials) score below all."""
    made = [ids.get(left + right) for left, right in pairs]
    if None in made:
        rank = made.index(None)
        raise ModelFormatError(f"merge {rank} {pairs[rank]!r} makes a token the vocabulary lacks",
                               field=f"{TOKENIZER_FILE}: model.merges")
    scores = np.full(size, -float(len(pairs)), dtype=np.float32)
    made_ids, first_rank = np.unique(np.asarray(made, dtype=np.int64), return_index=True)
    scores[made_ids] = -first_rank.astype(np.float32)
    return scores


def _steps(component: Any, list_key: str) -> list[dict]:
    """The steps of a normalizer or pre-tokenizer, a Sequence unrolled."""
    if component is None:
        return []
    if isinstance(component, dict) and component.get("type") == "Sequence" \
            and isinstance(component.get(list_key), list):
        return [step for inner in component[list_key] for step in _steps(inner, list_key)]
    if not isinstance(component, dict):
        raise ModelFormatError(f"expected an object, got {component!r}", field=TOKENIZER_FILE)
    return [component]


def _describe(step: Any) -> str:
    return repr(step.get("type")) if isinstance(step, dict) else repr(step)


def _space_prefix(tokenizer: Mapping[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts "▁" before the text (it must write spaces as "▁")."""
    escaped = prefixed = False
    for step in _steps(tokenizer.get("normalizer"), "normalizers"):
        if step == {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}:
            escaped = True
        elif step == {"type": "Prepend", "prepend": SPACE}:
            prefixed = True
        else:
            raise UnsupportedModelError(f"the {_describe(step)} normalizer step of a SentencePiece-style "
                                        f"{TOKENIZER_FILE} is not supported")
    for step in _steps(tokenizer.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace" and step.get("replacement") == SPACE and not step.get("split"):
            escaped = True
            default = "always" if step.get("add_prefix_space", True) else "never"  # before prepend_scheme existed
            prefixed = prefixed or step.get("prepend_scheme", default) in ("always", "first")
        elif escaped and step.get("type") == "Split" and step.get("pattern") == {"String": " "}:
            continue  # Gemma's: the normalizer has already replaced every space
        else:
            raise UnsupportedModelError(f"the {_describe(step)} pre-tokenizer step of a SentencePiece-style "
                                        f"{TOKENIZER_FILE} is not supported")
    if not escaped:
        raise UnsupportedModelError(f"a {TOKENIZER_FILE} with byte_fallback must write spaces as {SPACE!r}")
    return prefixed


def _byte_level_pre(pre_tokenizer: Any, model: Mapping[str, Any]) -> str:
    """The tokenizer.ggml.pre name whose regexes cut text as this pre-tokenizer does."""
    splits = []
    steps = _steps(pre_tokenizer, "pretokenizers")
    for index, step in enumerate(steps):
        kind = step.get("type")
        if kind == "ByteLevel" and index == len(steps) - 1 and not step.get("add_prefix_space"):
            if step.get("use_regex", True):
                splits.append(GPT2)
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert") \
                and isinstance(step.get("pattern"), dict) and isinstance(step["pattern"].get("Regex"), str):
            splits.append(step["pattern"]["Regex"].replace(_HF_CONTRACTIONS, CONTRACTIONS))
        elif kind == "Digits":
            splits.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        else:
            raise UnsupportedModelError(
                f"the {_describe(step)} step (position {index}) of the byte-level pre-tokenizer in {TOKENIZER_FILE} "
                "is not supported: expected regex Splits and Digits ending in a ByteLevel without add_prefix_space")
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise UnsupportedModelError(f"a byte-level {TOKENIZER_FILE} needs a ByteLevel pre-tokenizer as its last step")
    ignore_merges = bool(model.get("ignore_merges"))
    for name in DETECTABLE_PRE_TOKENIZERS:
        if PRE_TOKENIZERS[name].splits == tuple(splits) and PRE_TOKENIZERS[name].ignore_merges == ignore_merges:
            return name
    raise UnsupportedModelError(
        f"the pre-tokenizer in {TOKENIZER_FILE} (regexes {splits}, ignore_merges={ignore_merges}) matches none "
        f"deeproots knows; recognised: {', '.join(DETECTABLE_PRE_TOKENIZERS)}")


def _token_content(value: Any, field: str) -> str | None:
    """A special token as tokenizer_config.json writes it: its text, or an object with a "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ModelFormatError(f"expected a token's text, got {value!r}", field=field)
    return value


def _special_tokens(names: Mapping[str, Any], model: Mapping[str, Any], post_processor: Any,
                    ids: Mapping[str, int]) -> dict[str, Any]:
    """Special token ids, and whether BOS/EOS are added: the post-processor's choice unless tokenizer_config.json
    says (llama.cpp's precedence)."""
    texts = {name: _token_content(names.get(f"{name}_token"), f"{CONFIG_FILE}: {name}_token") for name in _SPECIAL_KEYS}
    texts["unk"] = texts["unk"] or _token_content(model.get("unk_token"), f"{TOKENIZER_FILE}: model.unk_token")
    first, last = _template_specials(post_processor)
    metadata: dict[str, Any] = {}
    for name, added, flag in (("bos", first, "add_bos_token"), ("eos", last, "add_eos_token")):
        if added is not None and texts[name] not in (None, added):
            raise UnsupportedModelError(f"the post-processor in {TOKENIZER_FILE} adds {added!r}, but the "
                                        f"{name.upper()} token is {texts[name]!r}")
        texts[name] = texts[name] or added
        setting = names.get(flag)
        metadata[f"tokenizer.ggml.{flag}"] = setting if isinstance(setting, bool) else added is not None
    for name, text in texts.items():
        if text is None:
            continue
        if text not in ids:
            raise ModelFormatError(f"{name} token {text!r} is not in the vocabulary",
                                   field=f"{CONFIG_FILE}: {name}_token")
        metadata[_SPECIAL_KEYS[name]] = ids[text]
    return metadata


def _template_specials(post_processor: Any) -> tuple[str | None, str | None]:
    """The special tokens HF's post-processor puts before and after a single text (None where it adds none)."""
    first = last = None
    for step in _steps(post_processor, "processors"):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single")
            if not isinstance(single, list) or not single:
                raise ModelFormatError("expected a non-empty list", field=f"{TOKENIZER_FILE}: post_processor.single")
            first, last = _special_text(single[0]), _special_text(single[-1])
        elif step.get("type") != "ByteLevel":  # ByteLevel only fixes offsets
            raise UnsupportedModelError(f"the {_describe(step)} post-processor in {TOKENIZER_FILE} is not supported")
    return first, last


def _special_text(piece: Any) -> str | None:
    special = piece.get("SpecialToken") if isinstance(piece, dict) else None
    return special.get("id") if isinstance(special, dict) and isinstance(special.get("id"), str) else None


def _chat_templates(folder: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """tokenizer.chat_template (the default) and tokenizer.chat_template.<name> for named ones, as llama.cpp."""
    templates = _template_files(folder)
    if not templates:
        value = config.get("chat_template")
        if isinstance(value, str):
            templates = {"default": value}
        elif isinstance(value, list) and all(isinstance(entry, dict) and isinstance(entry.get("name"), str)
                                             and isinstance(entry.get("template"), str) for entry in value):
            templates = {entry["name"]: entry["template"] for entry in value}
        elif value is not None:
            raise ModelFormatError("expected a template string or a list of {name, template}",
                                   field=f"{CONFIG_FILE}: chat_template")
    metadata: dict[str, Any] = {}
    named = []
    for name, source in templates.items():
        if name == "default":
            metadata[TEMPLATE_KEY] = source
        else:
            key_name = re.sub(r"[^A-Za-z0-9]", "_", name)  # llama.cpp keeps key names alphanumeric
            metadata[f"{TEMPLATE_KEY}.{key_name}"] = source
            named.append(key_name)
    if named:
        metadata["tokenizer.chat_templates"] = named
    return metadata


def _template_files(folder: str) -> dict[str, str]:
    paths = {"default": os.path.join(folder, TEMPLATE_FILE)}
    extra = os.path.join(folder, TEMPLATE_DIR)
    if os.path.isdir(extra):
        paths.update((name.removesuffix(".jinja"), os.path.join(extra, name))
                     for name in sorted(os.listdir(extra)) if name.endswith(".jinja"))
    templates = {}
    for name, path in paths.items():
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as file:
                    templates[name] = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelFormatError(f"the chat template cannot be read: {exc}",
                                       field=os.path.relpath(path, folder)) from exc
    return templates
