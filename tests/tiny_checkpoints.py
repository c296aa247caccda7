"""Tiny random Hugging Face checkpoints of every architecture, made the way the issue asks.

config -> random init -> save_pretrained, with every parameter (norms and biases too) perturbed so that a
mistake in any of them shows, saved beside the SmolLM2 tokenizer. The sliding windows are shorter than
the test texts, so windows are exercised.
"""

import shutil

import torch
import transformers

SETTINGS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
# config.json model_type -> (transformers config class, settings beyond SETTINGS)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 5}),
    "qwen2": ("Qwen2Config", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", {"head_dim": 32}),  # per-head q/k norms
    "gemma3_text": ("Gemma3TextConfig", {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 24,
                                         "sliding_window": 5}),  # 5 sliding layers, 1 global
    # mixtures of experts: 8 experts, 2 per token; the experts are narrower than `intermediate_size` where the
    # family has its own key for them, so a mix-up of the two shows
    "mixtral": ("MixtralConfig", {"num_local_experts": 8, "num_experts_per_tok": 2}),  # renormalised top-k
    "qwen2_moe": ("Qwen2MoeConfig", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 96}),  # a gated shared expert
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "head_dim": 32, "norm_topk_prob": True}),  # as the released models
    "olmoe": ("OlmoeConfig", {"num_experts": 8, "num_experts_per_tok": 2}),  # q/k norms over all heads
    # sinks, biases everywhere, sliding and full layers alternating, YaRN (factor 32 over an original 4096), the
    # clamped SwiGLU: the experts' width is intermediate_size, narrowed here
    "gpt_oss": ("GptOssConfig", {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32,
                                 "head_dim": 32, "sliding_window": 5}),
}
# The families whose MLPs are mixtures of experts
MOE_ARCHITECTURES = ("gpt_oss", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe")
LONGEST_WINDOW = 5


class CheckpointMaker:
    """maker(model_type, **changes) -> (folder, transformers model), each variant made once."""

    def __init__(self, tmp_path_factory, tokenizer):
        self.tmp_path_factory = tmp_path_factory
        self.tokenizer = tokenizer
        self.tokenizer_folder = tmp_path_factory.mktemp("tokenizer")
        tokenizer.save_pretrained(self.tokenizer_folder)
        self.made = {}

    def __call__(self, model_type: str, **changes):
        key = model_type, tuple(sorted(changes.items()))
        if key not in self.made:
            config_class, settings = ARCHITECTURES[model_type]
            config = getattr(transformers, config_class)(**{**SETTINGS, **settings, **changes,
                                                            "vocab_size": len(self.tokenizer)})
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.05 * torch.randn_like(parameter))
            folder = self.tmp_path_factory.mktemp(model_type)
            model.save_pretrained(folder)
            shutil.copytree(self.tokenizer_folder, folder, dirs_exist_ok=True)
            self.made[key] = folder, model
        return self.made[key]
