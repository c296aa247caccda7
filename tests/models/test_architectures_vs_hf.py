"""Every architecture against HF transformers: one runner over tiny random checkpoints.

Each checkpoint is made with transformers (tests/tiny_checkpoints.py: config -> random weights ->
save_pretrained, beside the SmolLM2 tokenizer), then run through our engine from the safetensors folder
and, after `convert`, from GGUF; logits are compared with transformers' on the same weights and tokens. The text is longer than
the sliding windows, so Mistral's and Gemma 3's windows are exercised.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_checkpoints import ARCHITECTURES, LONGEST_WINDOW, MOE_ARCHITECTURES

import deeproots
from deeproots.convert import convert_folder
from deeproots.errors import ModelFormatError, UnsupportedModelError

pytestmark = pytest.mark.slow  # transformers references, tiny checkpoints written and converted

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs, "
        "then count 1, 2, 3, 5, 8 and 13 before the sun sets over the quiet harbour.")


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def checkpoint(request, tiny_checkpoint):
    """(folder, transformers model) of a tiny random checkpoint of one architecture."""
    return tiny_checkpoint(request.param)


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (T, vocab)


def compare(ours, theirs: torch.Tensor) -> tuple[float, float]:
    """(max |diff|, top-1 agreement) of our logits (a numpy array) against transformers'."""
    ours = torch.as_tensor(ours)
    return (ours - theirs).abs().max().item(), (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()


def test_reference_path_from_folder_matches_transformers(checkpoint):
    folder, hf_model = checkpoint
    model = deeproots.load(folder, reference=True)
    ids = model.tokenize(TEXT)
    assert len(ids) > 2 * LONGEST_WINDOW
    max_diff, top1 = compare(model.logits(ids), hf_logits(hf_model, ids))
    assert max_diff < 1e-4
    assert top1 == 1.0


def test_fast_path_from_folder_matches_transformers(checkpoint):
    folder, hf_model = checkpoint
    model = deeproots.load(folder)  # float32 weights through the packed F32 kernels, f16 KV cache
    ids = model.tokenize(TEXT)
    max_diff, top1 = compare(model.logits(ids), hf_logits(hf_model, ids))
    assert max_diff < 5e-3
    assert top1 >= 0.95


# --type -> (max |diff| bound, top-1 bound) of our reference path on the converted file against transformers.
# float16 rounds each weight by 2^-11 relative; q8_0 by up to 1/254 of its block's largest value.
CONVERTED_BOUNDS = {"f32": (1e-4, 1.0), "f16": (1e-2, 0.95), "q8_0": (0.2, 0.85)}
# A mixture of experts is not continuous in its weights: a token whose second and third experts are within q8_0's
# rounding of each other switches expert (seen on OLMoE, its router kept in F32: at 1 token-layer of TEXT, max |diff|
# 0.19 there, 0.04 elsewhere).
MOE_CONVERTED_BOUNDS = {**CONVERTED_BOUNDS, "q8_0": (0.4, 0.85)}
# gpt-oss's tiny checkpoint is more sensitive still: its router has a near-tie at token 1 (a 1e-3 change of that
# token's embedding moves transformers' own logits by 0.83 from there on, through attention), which q8_0 tips.
CONVERTED_BOUNDS_OF = {"gpt_oss": {**MOE_CONVERTED_BOUNDS, "q8_0": (1.0, 0.85)}}


@pytest.mark.parametrize("target", sorted(CONVERTED_BOUNDS))
def test_converted_gguf_matches_transformers(checkpoint, target, tmp_path):
    folder, hf_model = checkpoint
    out = tmp_path / f"model-{target}.gguf"
    convert_folder(folder, out, target, progress=False)
    model = deeproots.load(out, reference=True)
    ids = model.tokenize(TEXT)
    max_diff, top1 = compare(model.logits(ids), hf_logits(hf_model, ids))
    print(f"\n{target}: max |diff| {max_diff:.2e}, top-1 {top1:.3f}")
    model_type = hf_model.config.model_type
    bounds = MOE_CONVERTED_BOUNDS if model_type in MOE_ARCHITECTURES else CONVERTED_BOUNDS
    diff_bound, top1_bound = CONVERTED_BOUNDS_OF.get(model_type, bounds)[target]
    assert max_diff < diff_bound
    assert top1 >= top1_bound


# What llama.cpp cannot express, changed so that its output can be compared: it fixes Gemma 3's attention
# scale at 1/sqrt(head_dim) (ignoring the file's attention.scale), its llama architecture has no window, and its
# OLMoE has no grouped-query attention (it wants a k norm as wide as the model).
LLAMA_CPP_CHANGES = {"gemma3_text": {"query_pre_attn_scalar": 32}, "mistral": {"sliding_window": None},
                     "olmoe": {"num_key_value_heads": 4}}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_llama_cpp_runs_the_converted_file(model_type, tiny_checkpoint, tmp_path):
    """llama.cpp (where the optional bench extra is installed) reads our GGUF and computes transformers' logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    folder, hf_model = tiny_checkpoint(model_type, **LLAMA_CPP_CHANGES.get(model_type, {}))
    out = tmp_path / "model-f32.gguf"
    convert_folder(folder, out, "f32", progress=False)
    ids = deeproots.load(out, reference=True).tokenize(TEXT)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])  # (T, vocab)
    max_diff, top1 = compare(theirs, hf_logits(hf_model, ids))
    assert max_diff < 1e-2  # llama.cpp's own arithmetic (f16 K/V cache) against transformers' float32
    assert top1 >= 0.95


def test_greedy_text_from_folder_matches_transformers(checkpoint, hf_smollm2_tokenizer):
    folder, hf_model = checkpoint
    model = deeproots.load(folder, reference=True)
    ids = model.tokenize(TEXT)
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):]
    hf_tokenizer = hf_smollm2_tokenizer  # the vocabulary every tiny checkpoint is made with
    assert ids == hf_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert model.generate(ids, max_tokens=12, temperature=0) == hf_tokenizer.decode(expected)
    # The chat template comes from tokenizer_config.json.
    assert model.apply_chat_template(MESSAGES) == hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False,
                                                                                  add_generation_prompt=True)


def test_cli_runs_a_folder_without_torch(tiny_checkpoint):
    folder, _ = tiny_checkpoint("qwen3")
    expected = deeproots.load(folder).generate(TEXT, max_tokens=8, temperature=0)
    code = ("import sys; from deeproots.cli import main; main(sys.argv[1:]); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, "run", "--raw", "-m", str(folder), "--temperature", "0",
                             "--repeat-penalty", "1", "--max-tokens", "8", TEXT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\nFalse\n"  # the answer, then: torch was never imported


def test_sharded_folder_loads_through_its_index(tmp_path, tiny_checkpoint):
    folder, hf_model = tiny_checkpoint("llama")
    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded, ignore=shutil.ignore_patterns("*.safetensors"))
    hf_model.save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    model = deeproots.load(sharded, reference=True)
    ids = model.tokenize(TEXT)
    max_diff, top1 = compare(model.logits(ids), hf_logits(hf_model, ids))
    assert max_diff < 1e-4 and top1 == 1.0


def write_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.fixture
def llama_copy(tmp_path, tiny_checkpoint):
    copy = tmp_path / "llama"
    shutil.copytree(tiny_checkpoint("llama")[0], copy)
    return copy


def test_unsupported_architecture_names_the_supported_ones(llama_copy):
    write_config(llama_copy, model_type="bert")
    with pytest.raises(UnsupportedModelError, match="gemma3_text.*llama.*qwen3"):
        deeproots.load(llama_copy)


def test_shape_mismatch_names_the_tensor(llama_copy):
    write_config(llama_copy, intermediate_size=96)
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate.weight"):
        deeproots.load(llama_copy)
