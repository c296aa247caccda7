"""A tiny sentencepiece BPE model with byte fallback, trained on generated text, and the GGUF metadata
llama.cpp's converter would write for it (piece, score and type per token)."""

from __future__ import annotations

import io
import random

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

WORDS = ("the quick brown fox jumps over a lazy dog while tokens merge into pieces and sentences "
         "café naïve résumé über straße façade 東京 日本語 中文 hello world 2024 3.14 don't it's").split()


def training_lines(count: int = 400) -> list[str]:
    rng = random.Random(5)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def train(add_dummy_prefix: bool) -> bytes:
    """A serialized model: 400 pieces, 256 of them <0xNN> bytes, plus user-defined <ud> and control <ctl>."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, user_defined_symbols=["<ud>"],
        control_symbols=["<ctl>"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return model.getvalue()


def gguf_metadata(proto: sentencepiece_model_pb2.ModelProto, sp: spm.SentencePieceProcessor) -> dict:
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [piece.piece for piece in proto.pieces],
        "tokenizer.ggml.scores": np.array([piece.score for piece in proto.pieces], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([piece.type for piece in proto.pieces], dtype=np.int32),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_space_prefix": proto.normalizer_spec.add_dummy_prefix,
    }


class TinyModel:
    """sentencepiece's processor, its model proto, and the matching GGUF metadata."""

    def __init__(self, add_dummy_prefix: bool):
        serialized = train(add_dummy_prefix)
        self.sp = spm.SentencePieceProcessor(model_proto=serialized)
        self.proto = sentencepiece_model_pb2.ModelProto()
        self.proto.ParseFromString(serialized)
        self.metadata = gguf_metadata(self.proto, self.sp)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"<tiny sentencepiece model, add_dummy_prefix={self.proto.normalizer_spec.add_dummy_prefix}>"
