"""`deeproots quantize` and `deeproots convert`: the files they write are read by our reader and by the official
`gguf` package, keep the source's metadata and tokenizer, and stay within each format's error of the source's
weights and of transformers' logits."""

import functools
import os

import numpy as np
import pytest

import deeproots
from deeproots.cli import main
from deeproots.convert import FILE_TYPES, convert_folder, quantize_file, tensor_type
from deeproots.errors import ModelNotFoundError, RequestError
from deeproots.formats.gguf import GGUFFile, GGUFValueType
from deeproots.formats.gguf_writer import GGUFWriter
from deeproots.quant import GGMLType, dequantize, quantize

gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.slow  # whole-model requantization, llama.cpp

# Largest error in a block of 32, as a fraction of the block's largest |value|: half a grid step (Q4_0's grid
# reaches only +7 of its +-8 steps, so a full step on one side), plus the f16 scale's rounding.
BLOCK_ERROR = {"q8_0": 1 / 254 + 2**-10, "q4_0": 1 / 8 + 2**-9}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@functools.cache
def official_reader(path) -> "gguf.GGUFReader":
    """The official reader on `path`, built once: reading 49152 token strings in Python takes seconds."""
    return gguf.GGUFReader(path)


def official_fields(reader) -> dict:
    return {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}


# ---- quantize: the real default model -------------------------------------------------------------------

@pytest.fixture(scope="module", params=["q8_0", "q4_0"])
def quantized(request, smollm2_path, tmp_path_factory):
    """(target, output path, summary) of the default model requantized (~1.5 s each)."""
    out = tmp_path_factory.mktemp("quantized") / f"smollm2-{request.param}.gguf"
    return request.param, out, quantize_file(smollm2_path, out, request.param, progress=False)


def test_quantized_file_keeps_metadata_and_layout(quantized, smollm2_path):
    target, out, summary = quantized
    with GGUFFile.open(smollm2_path) as source, GGUFFile.open(out) as result:
        assert list(result.metadata) == list(source.metadata)
        assert result.metadata_types == source.metadata_types
        for key, value in source.metadata.items():
            expected = FILE_TYPES[target] if key == "general.file_type" else value
            assert same_value(result.metadata[key], expected), key
        assert [(i.name, i.shape) for i in result.tensors.values()] == \
               [(i.name, i.shape) for i in source.tensors.values()]
        for info in result.tensors.values():
            # The tied output projection (token_embd, rows of 576: too narrow for Q6_K) stays Q8_0, as llama.cpp.
            expected = GGMLType.F32 if len(info.shape) == 1 else \
                GGMLType.Q8_0 if info.name == "token_embd.weight" else GGMLType[target.upper()]
            assert info.ggml_type == expected, info.name
    if target == "q8_0":
        assert summary.tensor_types == {"Q8_0": 211, "F32": 61} and summary.output_tensor is None
    else:
        assert summary.tensor_types == {target.upper(): 210, "Q8_0": 1, "F32": 61}
        assert summary.output_tensor == ("token_embd.weight", "Q8_0")
    assert summary.fallbacks == {}
    assert summary.output_bytes == os.path.getsize(out) and summary.input_bytes == os.path.getsize(smollm2_path)


def test_official_reader_reads_the_quantized_file(quantized, smollm2_metadata):
    target, out, _ = quantized
    reader = official_reader(out)
    fields = official_fields(reader)
    assert list(fields) == list(smollm2_metadata)
    for key, value in smollm2_metadata.items():
        if key != "general.file_type":
            assert same_value(fields[key].contents(), value.tolist() if isinstance(value, np.ndarray) else value), key
    assert fields["general.file_type"].contents() == FILE_TYPES[target]
    with GGUFFile.open(out) as ours:
        assert [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in reader.tensors] == \
               [(i.name, i.shape, int(i.ggml_type)) for i in ours.tensors.values()]


def test_quantized_weights_stay_within_the_format_error(quantized, smollm2_path):
    target, out, _ = quantized
    official = {t.name: t for t in official_reader(out).tensors}
    with GGUFFile.open(smollm2_path) as source, GGUFFile.open(out) as result:
        # every kind of tensor, at both ends of the file (all of them would take ~10 s)
        names = [name for name in result.tensors
                 if not name.startswith("blk.") or name.startswith(("blk.0.", "blk.29."))]
        for name in names:
            info = result.tensors[name]
            original = dequantize(source.tensor_data(name), source.tensors[name].ggml_type, info.shape)
            ours = dequantize(result.tensor_data(name), info.ggml_type, info.shape)
            theirs = gguf.quants.dequantize(official[name].data, official[name].tensor_type)
            assert np.array_equal(ours, theirs.reshape(ours.shape)), name
            if len(info.shape) == 1:
                assert np.array_equal(ours, original), name  # F32 vectors are copied
                continue
            blocks, error = original.reshape(-1, 32), np.abs(ours - original).reshape(-1, 32)
            assert (error.max(1) <= np.abs(blocks).max(1) * BLOCK_ERROR[target]).all(), name


def test_quantized_model_generates_with_the_same_tokenizer_and_template(quantized, smollm2):
    target, out, _ = quantized
    model = deeproots.load(out, context=256)
    prompt = model.apply_chat_template(MESSAGES)
    assert prompt == smollm2.apply_chat_template(MESSAGES)
    ids = model.tokenize(prompt, add_bos=False, parse_special=True)
    assert ids == smollm2.tokenize(prompt, add_bos=False, parse_special=True)
    if target == "q8_0":  # 8 bits over a 4-bit source: the greedy answer does not change
        assert model.generate(ids, max_tokens=8, temperature=0) == smollm2.generate(ids, max_tokens=8, temperature=0)


def test_quantized_model_answers_as_llama_cpp_does_on_the_same_file(quantized):
    llama_cpp = pytest.importorskip("llama_cpp")  # the bench extra, which `make test` installs
    _, out, _ = quantized
    model = deeproots.load(out, context=256)
    ids = model.tokenize(model.apply_chat_template(MESSAGES), add_bos=False, parse_special=True)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, verbose=False)
    theirs = llama_cpp_greedy(llm, ids, 8, model.tokenizer.stop_ids)
    assert model.generate(ids, max_tokens=8, temperature=0) == theirs


def llama_cpp_greedy(llm, ids: list[int], max_tokens: int, stop_ids) -> str:
    """llama.cpp's greedy answer to the prompt ids, ending where ours would: at a stop token or max_tokens."""
    answer = []
    for token in llm.generate(ids, temp=0.0):
        if token in stop_ids or len(answer) == max_tokens:
            break
        answer.append(token)
    return llm.detokenize(answer).decode()


# ---- the type rule, and metadata types kept on a small synthetic file --------------------------------------

def test_pure_quantizes_the_output_projection_too(smollm2_path, tmp_path):
    summary = quantize_file(smollm2_path, tmp_path / "pure.gguf", "q4_0", progress=False, pure=True)
    assert summary.tensor_types == {"Q4_0": 211, "F32": 61} and summary.output_tensor is None
    with GGUFFile.open(tmp_path / "pure.gguf") as result:
        assert result.tensors["token_embd.weight"].ggml_type == GGMLType.Q4_0


def test_output_projection_follows_llama_cpp():
    assert tensor_type("q4_0", (512, 32000), output=True) == GGMLType.Q6_K
    assert tensor_type("q4_k", (576, 49152), output=True) == GGMLType.Q8_0  # 576 is not a multiple of 256
    assert tensor_type("q6_k", (512, 32000), output=True) == GGMLType.Q6_K
    assert tensor_type("q8_0", (512, 32000), output=True) == GGMLType.Q8_0  # never narrower than the target
    assert tensor_type("q4_0", (48, 4), output=True) == GGMLType.F16  # fits no block
    assert tensor_type("f16", (512, 32000), output=True) == GGMLType.F16  # only quantized targets
    assert tensor_type("q4_0", (576,), output=True) == GGMLType.F32


def test_tensor_type_follows_llama_cpp_fallbacks():
    assert tensor_type("q4_k", (1536, 576)) == GGMLType.Q4_K
    assert tensor_type("q4_k", (576, 1536)) == GGMLType.Q5_0  # 576 is not a multiple of 256
    assert tensor_type("q6_k", (576, 1536)) == GGMLType.Q8_0
    assert tensor_type("q4_k", (48, 4)) == GGMLType.F16  # not a multiple of 32 either
    assert tensor_type("q8_0", (48, 4)) == GGMLType.F16
    assert tensor_type("q8_0", (576,)) == GGMLType.F32
    assert tensor_type("q8_0", (576, 1)) == GGMLType.F32  # ggml counts trailing 1s out: a vector
    assert tensor_type("bf16", (576, 8)) == GGMLType.BF16


def test_quantize_command_reports_fallbacks_and_keeps_unusual_key_types(tmp_path, capsys):
    rng = np.random.default_rng(0)
    writer = GGUFWriter(alignment=64)
    writer.add("general.architecture", "llama")
    writer.add("custom.count", 7, GGUFValueType.INT64)
    writer.add("custom.flags", np.array([1, 2], np.uint8))
    wide, narrow = rng.standard_normal((4, 512)).astype(np.float32), rng.standard_normal((4, 576)).astype(np.float32)
    writer.add_tensor("wide.weight", quantize(wide, GGMLType.Q8_0).reshape(-1), GGMLType.Q8_0, (512, 4))
    writer.add_tensor("narrow.weight", narrow, GGMLType.F32)
    writer.add_tensor("norm.weight", rng.standard_normal(576).astype(np.float16), GGMLType.F16)
    source = tmp_path / "source.gguf"
    writer.write(source)
    assert main(["quantize", str(source), str(tmp_path / "out.gguf"), "--type", "q4_k"]) == 0
    assert "fell back where rows do not fit the target's blocks: Q5_0 x1" in capsys.readouterr().out
    with GGUFFile.open(tmp_path / "out.gguf") as result:
        assert result.alignment == 64
        assert result.metadata_types["custom.count"] == (GGUFValueType.INT64, None)
        assert result.metadata_types["custom.flags"] == (GGUFValueType.ARRAY, GGUFValueType.UINT8)
        assert result.metadata["general.quantization_version"] == 2
        assert {name: info.ggml_type for name, info in result.tensors.items()} == \
               {"wide.weight": GGMLType.Q4_K, "narrow.weight": GGMLType.Q5_0, "norm.weight": GGMLType.F32}


# ---- convert: a tiny random transformers checkpoint --------------------------------------------------------

@pytest.fixture(scope="module", params=["f32", "f16", "q8_0"])
def converted(request, tiny_checkpoint, tmp_path_factory):
    """(target, output path) of a tiny random llama converted (its logits: tests/models/test_architectures_vs_hf.py)."""
    out = tmp_path_factory.mktemp("converted") / f"tiny-{request.param}.gguf"
    convert_folder(tiny_checkpoint("llama")[0], out, request.param, progress=False)
    return request.param, out


def test_converted_file_uses_llama_cpp_types(converted, smollm2_path):
    """Every key that llama.cpp's own SmolLM2 file also has is stored with the same value type."""
    target, out = converted
    with GGUFFile.open(smollm2_path) as reference, GGUFFile.open(out) as result:
        shared = set(result.metadata) & set(reference.metadata)
        assert {"llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.chat_template"} <= shared
        assert {key: result.metadata_types[key] for key in shared} == {key: reference.metadata_types[key]
                                                                       for key in shared}
        assert result.metadata["general.file_type"] == FILE_TYPES[target]
        assert result.metadata["general.quantization_version"] == 2
        types = {name: info.ggml_type for name, info in result.tensors.items()}
    assert types["blk.0.attn_norm.weight"] == GGMLType.F32
    assert types["blk.1.ffn_down.weight"] == types["output.weight"] == GGMLType[target.upper()]
    reader = official_reader(out)
    assert set(official_fields(reader)) == set(result.metadata)
    assert {t.name: int(t.tensor_type) for t in reader.tensors} == {name: int(t) for name, t in types.items()}


# ---- bad input ---------------------------------------------------------------------------------------------

def test_unknown_type_is_refused_by_the_parser(smollm2_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(smollm2_path), str(tmp_path / "out.gguf"), "--type", "q3_x"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_missing_input_file(tmp_path, capsys):
    with pytest.raises(ModelNotFoundError):
        quantize_file(tmp_path / "missing.gguf", tmp_path / "out.gguf", "q8_0")
    assert main(["quantize", str(tmp_path / "missing.gguf"), str(tmp_path / "out.gguf"), "--type", "q8_0"]) == 1
    assert "no model file" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_output_equal_to_input_is_refused(smollm2_path, tmp_path):
    link = tmp_path / "same.gguf"  # a second name for the input: replacing it would only replace the link
    link.symlink_to(smollm2_path)
    for out in (smollm2_path, link):
        with pytest.raises(RequestError, match="is the input file"):
            quantize_file(smollm2_path, out, "q8_0", progress=False)
    with pytest.raises(RequestError, match="is a folder"):
        quantize_file(smollm2_path, tmp_path, "q8_0", progress=False)


def test_convert_needs_a_folder_with_config_json(tmp_path, smollm2_path, capsys):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        convert_folder(tmp_path, tmp_path / "out.gguf", "f16")
    with pytest.raises(ModelNotFoundError, match="not a folder"):
        convert_folder(smollm2_path, tmp_path / "out.gguf", "f16")
    assert main(["convert", str(tmp_path), str(tmp_path / "out.gguf")]) == 1
    assert "config.json is missing" in capsys.readouterr().err
