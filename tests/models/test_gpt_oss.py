"""gpt-oss (models/gpt_oss.py) piece by piece against transformers' GptOss code: the router's experts per token in
order and their weights, the clamped SwiGLU on HF's interleaved gate/up, YaRN's frequencies; and typed errors for
what a checkpoint or file can get wrong. The logits of the whole model run in the shared runner
(test_architectures_vs_hf.py, and test_moe.py's routing sets).
"""

import json
import shutil

import numpy as np
import pytest
import torch

import deeproots
from deeproots import kernels
from deeproots.backends.formulas import clamped_swiglu, route, yarn_frequencies
from deeproots.config import YarnScaling
from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.formats.names import GPT_OSS_SWIGLU_ALPHA as SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT as SWIGLU_LIMIT

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs, "
        "then count 1, 2, 3, 5, 8 and 13 before the sun sets over the quiet harbour.")


@pytest.mark.parametrize("route", [route, kernels.route], ids=["formula", "kernel"])
def test_route_is_top_k_then_softmax(route):
    """gpt-oss's softmax over the top-k logits alone is the top-k probabilities renormalised."""
    logits = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32) * 3
    ids, weights = route(logits, 3, True)
    values, indices = torch.topk(torch.from_numpy(logits), 3, dim=-1)
    np.testing.assert_array_equal(ids, indices.numpy())
    np.testing.assert_allclose(weights, values.softmax(-1).numpy(), rtol=1e-6)


@pytest.mark.slow  # transformers
def test_routing_in_order_matches_transformers(tiny_checkpoint):
    """Every token's experts in every layer are transformers' router_indices, in the same order, with its scores."""
    folder, hf_model = tiny_checkpoint("gpt_oss")
    model = deeproots.load(folder, reference=True)
    ids = model.tokenize(TEXT)
    ours, theirs = [], []
    for block in model.net.blocks:
        original = block.moe.route
        block.moe.route = lambda h, original=original: ours.append(original(h)) or ours[-1]
    hooks = [layer.mlp.router.register_forward_hook(lambda module, args, out: theirs.append(out))
             for layer in hf_model.model.layers]
    try:
        model.logits(ids)
        with torch.no_grad():
            hf_model(torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(ours) == len(theirs) == len(hf_model.model.layers)
    for layer, ((our_ids, our_weights), (_, scores, indices)) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(our_ids, indices.numpy(), err_msg=f"layer {layer}")
        np.testing.assert_allclose(our_weights, scores.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"layer {layer}")


@pytest.mark.slow  # transformers
def test_clamped_swiglu_matches_transformers():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    experts = GptOssExperts(GptOssConfig(hidden_size=8, intermediate_size=16, num_local_experts=1))
    assert (experts.alpha, experts.limit) == (SWIGLU_ALPHA, SWIGLU_LIMIT)
    interleaved = torch.randn(40, 32) * 6  # beyond the clamps too
    expected = experts._apply_gate(interleaved).numpy()
    ours = clamped_swiglu(torch.cat([interleaved[:, ::2], interleaved[:, 1::2]], dim=1).numpy(),
                          SWIGLU_ALPHA, SWIGLU_LIMIT)  # our [gate | up], as the converter splits them
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # transformers
@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("head_dim, theta, factor", [(64, 150000.0, 32.0), (32, 10000.0, 4.0), (128, 1e6, 8.0)])
def test_yarn_frequencies_match_transformers(head_dim, theta, factor, truncate):
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "truncate": truncate}
    config = GptOssConfig(head_dim=head_dim, rope_parameters=rope, max_position_embeddings=131072)
    expected, expected_scale = ROPE_INIT_FUNCTIONS["yarn"](config)
    inv_freq, scale = yarn_frequencies(YarnScaling(factor, 4096, truncate=truncate), head_dim, theta)
    np.testing.assert_allclose(inv_freq, expected.numpy(), rtol=1e-6)
    assert scale == pytest.approx(expected_scale, rel=1e-12)


def copy_of(tmp_path, tiny_checkpoint, **changes):
    copy = tmp_path / "gpt_oss"
    shutil.copytree(tiny_checkpoint("gpt_oss")[0], copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.slow  # transformers checkpoints
@pytest.mark.parametrize("changes, message", [
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ({"swiglu_limit": 5.0}, "swiglu_limit"),
    ({"rope_parameters": {"truncate": True}}, "truncate"),
    ({"rope_parameters": {"attention_factor": 2.0}}, "attention_factor"),
])
def test_what_the_model_does_not_compute_is_refused(tmp_path, tiny_checkpoint, changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        deeproots.load(copy_of(tmp_path, tiny_checkpoint, **changes))


@pytest.mark.slow  # transformers checkpoints
def test_expert_tensors_that_do_not_fit_name_the_tensor(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file, save_file

    folder = copy_of(tmp_path, tiny_checkpoint)
    tensors = load_file(folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate_inp.weight holds 8 experts.*gpt-oss.expert_count"):
        deeproots.load(copy_of(tmp_path / "count", tiny_checkpoint, num_local_experts=6))
    bias = "model.layers.0.mlp.experts.gate_up_proj_bias"
    tensors[bias] = tensors[bias][:, :-2]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate_exps.bias"):
        deeproots.load(folder)
    for name in ("gate_up_proj_bias", "down_proj_bias"):
        del tensors[f"model.layers.0.mlp.experts.{name}"]
    save_file(tensors, folder / "model.safetensors")  # experts without biases: a model of its own, which loads
    assert deeproots.load(folder, reference=True).net.blocks[0].moe.gate_up_bias is None


# Every token takes all 8 experts: the tiny checkpoint's top-2 router has a near-tie at token 1 (a 1e-3 change of its
# embedding moves transformers' own logits by 0.83 from there on, through attention), which any rounding of the
# activations may tip; with all experts the output is continuous in the weights, so rounding shows as rounding.
ALL_EXPERTS = {"num_experts_per_tok": 8}


@pytest.fixture(scope="module")
def mxfp4_file(tiny_checkpoint, tmp_path_factory):
    """The tiny gpt-oss converted with its experts in MXFP4 (the rest q8_0), as gpt-oss ships them."""
    from deeproots.convert import convert_folder

    out = tmp_path_factory.mktemp("mxfp4") / "model-mxfp4_moe.gguf"
    convert_folder(tiny_checkpoint("gpt_oss", **ALL_EXPERTS)[0], out, "mxfp4_moe", progress=False)
    return out


@pytest.mark.slow  # transformers checkpoints
def test_mxfp4_experts_are_written_as_gguf_reads_them(mxfp4_file, tiny_checkpoint):
    import gguf  # the test extra's independent reader

    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(mxfp4_file).tensors}
    for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        assert tensors[f"blk.0.{name}.weight"].tensor_type.name == "MXFP4"
    for name in ("attn_q.weight", "ffn_gate_inp.weight", "ffn_gate_exps.bias", "attn_sinks.weight"):
        assert tensors[f"blk.0.{name}"].tensor_type.name == ("Q8_0" if name == "attn_q.weight" else "F32")
    # Expert 5's up matrix: the odd columns of HF's gate_up_proj[5], transposed, within MXFP4's rounding.
    up = gguf.dequantize(tensors["blk.1.ffn_up_exps.weight"].data, gguf.GGMLQuantizationType.MXFP4)[5]
    experts = tiny_checkpoint("gpt_oss", **ALL_EXPERTS)[1].model.layers[1].mlp.experts
    reference = experts.gate_up_proj[5, :, 1::2].T.detach().numpy()
    assert np.abs(up - reference).max() <= np.abs(reference).max() / 6  # half MXFP4's widest step (8 -> 12) of 12


@pytest.mark.slow  # llama.cpp
def test_llama_cpp_runs_the_mxfp4_file_as_we_do(mxfp4_file):
    """llama.cpp's own MXFP4 code and ours give the same logits for the same file (our reference path)."""
    import llama_cpp  # the bench extra, which `make test` installs

    model = deeproots.load(mxfp4_file, reference=True)
    ids = model.tokenize(TEXT)
    ours = model.logits(ids)
    llm = llama_cpp.Llama(model_path=str(mxfp4_file), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])  # (T, vocab)
    # llama.cpp quantizes the activations to 8 bits for its q8_0 and MXFP4 products and keeps K and V in f16: seen
    # 0.026 of logits up to 2.1 (our fast path, which does likewise, differs from it by 0.024)
    assert np.abs(ours - theirs).max() < 0.03 * np.abs(ours).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9  # random logits: near-ties among 49,152 (seen 0.94)


@pytest.mark.slow  # transformers checkpoints
def test_fast_path_runs_mxfp4_experts_like_the_reference(mxfp4_file):
    """The CPU backend runs MXFP4 experts packed as Q8_0 (the int8 kernels), not as dense float32."""
    from deeproots.backends.linears import PackedExperts

    reference, fast = deeproots.load(mxfp4_file, reference=True), deeproots.load(mxfp4_file)
    assert isinstance(fast.net.blocks[0].moe.ffn_gate_up_exps, PackedExperts)
    ids = reference.tokenize(TEXT)
    expected = reference.logits(ids)
    assert np.abs(fast.logits(ids) - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.slow  # transformers checkpoints
def test_mxfp4_checkpoint_matches_transformers_dequantized(tmp_path, tiny_checkpoint):
    """A folder whose experts are MXFP4 blocks and scales, as openai/gpt-oss-* ship them (random codes here), against
    transformers running the same weights dequantized by its own convert_moe_packed_tensors."""
    import copy

    from safetensors.numpy import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    folder, hf_model = tiny_checkpoint("gpt_oss")
    mxfp4 = tmp_path / "mxfp4"
    shutil.copytree(folder, mxfp4)
    tensors = load_file(mxfp4 / "model.safetensors")
    dequantized = copy.deepcopy(hf_model)
    rng = np.random.default_rng(0)
    for index, layer in enumerate(dequantized.model.layers):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{index}.mlp.experts.{name}"
            n_experts, inputs, outputs = tensors.pop(key).shape  # HF's (experts, in, out)
            blocks = rng.integers(0, 256, (n_experts, outputs, inputs // 32, 16), dtype=np.uint8)
            scales = rng.integers(120, 124, (n_experts, outputs, inputs // 32), dtype=np.uint8)  # 2^-7 .. 2^-4
            tensors[key + "_blocks"], tensors[key + "_scales"] = blocks, scales
            weight = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
            getattr(layer.mlp.experts, name).data = weight  # (experts, in, out)
    save_file(tensors, mxfp4 / "model.safetensors")
    model = deeproots.load(mxfp4, reference=True)
    ids = model.tokenize(TEXT)
    with torch.no_grad():
        expected = dequantized(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(model.logits(ids) - expected).max() < 1e-4
    del tensors["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(tensors, mxfp4 / "model.safetensors")
    with pytest.raises(ModelFormatError, match="down_proj_scales"):
        deeproots.load(mxfp4)
