"""Decoder-only transformers (Llama-3, Mistral, Qwen2.5, DeepSeek-Math) and HF checkpoint I/O."""

from zero_rl.models.config import PRESETS, ModelConfig, RopeScaling, get_preset
from zero_rl.models.hf import from_hf, to_hf
from zero_rl.models.params import abstract_params, create_model, logical_axes, param_shardings
from zero_rl.models.transformer import (
    KVCache,
    Transformer,
    apply,
    logprobs_from_hidden,
    positions_from_mask,
    token_logprobs,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "apply",
    "create_model",
    "from_hf",
    "get_preset",
    "logical_axes",
    "logprobs_from_hidden",
    "param_shardings",
    "positions_from_mask",
    "to_hf",
    "token_logprobs",
]
