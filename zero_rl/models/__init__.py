"""Decoder-only transformers (Llama-3, Mistral, Qwen2.5, DeepSeek-Math) and HF checkpoint I/O."""

from zero_rl.models.config import (
    ARCHITECTURE_FIELDS,
    PRESETS,
    ModelConfig,
    RopeScaling,
    config_mismatches,
    get_preset,
)
from zero_rl.models.hf import from_hf, to_hf
from zero_rl.models.hf_config import config_from_hf, hf_config, read_config_json
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
    "ARCHITECTURE_FIELDS",
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "apply",
    "config_from_hf",
    "config_mismatches",
    "create_model",
    "from_hf",
    "get_preset",
    "hf_config",
    "logical_axes",
    "logprobs_from_hidden",
    "param_shardings",
    "positions_from_mask",
    "read_config_json",
    "to_hf",
    "token_logprobs",
]
