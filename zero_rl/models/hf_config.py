"""Hugging Face `config.json` <-> ModelConfig, for the Llama, Mistral and Qwen2 families.

Keys a config.json leaves out take the defaults of the matching `transformers` config class
(`LlamaConfig`, `MistralConfig`, `Qwen2Config`), so a checkpoint means here what it means there:
e.g. a Mistral config without `sliding_window` attends over a 4096-token window, one with
`"sliding_window": null` over the whole sequence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zero_rl.models.config import ModelConfig, RopeScaling

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Sizes HF would also default, but a config.json without them is not a real checkpoint's: a clear
# error beats a silently invented 4096-wide model.
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads")  # fmt: skip
# The `transformers` config classes' defaults for the optional keys read here. A
# num_key_value_heads of None (absent from LlamaConfig) means one KV head per query head.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": dict(
        num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_theta=10_000.0, tie_word_embeddings=False, hidden_act="silu",
        attention_bias=False, mlp_bias=False,
    ),
    "MistralForCausalLM": dict(
        num_key_value_heads=8, max_position_embeddings=131_072, rms_norm_eps=1e-6,
        rope_theta=10_000.0, tie_word_embeddings=False, hidden_act="silu", sliding_window=4096,
    ),
    "Qwen2ForCausalLM": dict(
        num_key_value_heads=32, max_position_embeddings=32_768, rms_norm_eps=1e-6,
        rope_theta=10_000.0, tie_word_embeddings=False, hidden_act="silu",
        use_sliding_window=False,
    ),
}  # fmt: skip


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The dict in an HF `config.json`: `path` is the file or the checkpoint directory.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that is
    not a JSON object.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object")
    return config


def _architecture(hf: Mapping[str, Any]) -> str:
    """The `architectures` entry, or the one matching `model_type` when that list is absent."""
    by_type = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
    archs = hf.get("architectures") or [by_type.get(hf.get("model_type"))]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        found = archs[0] or f"model_type={hf.get('model_type')!r}"
        raise ValueError(
            f"unsupported HF architecture {found}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    return archs[0]


def _rope(hf: Mapping[str, Any], default_theta: float) -> tuple[float, RopeScaling | None]:
    # transformers<5 writes `rope_theta` + `rope_scaling`; 5.x folds both into `rope_parameters`.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", default_theta)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(
            f"unsupported rope scaling type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}"
        )
    return theta, RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position=int(rope["original_max_position_embeddings"]),
    )


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig described by an HF `config.json` (as a dict).

    Absent optional keys take the defaults of the architecture's `transformers` config class
    (`HF_DEFAULTS`); the five sizes in `REQUIRED_KEYS` must be present. Features this model does
    not implement (other activations, MLP or output biases, sliding windows on some layers only,
    rope scalings other than llama3) raise ValueError rather than load as something else.
    """
    arch = _architecture(hf)
    if missing := [k for k in REQUIRED_KEYS if hf.get(k) is None]:
        raise ValueError(f"HF config for {arch} lacks {missing}")
    hf = HF_DEFAULTS[arch] | dict(hf)
    if hf["hidden_act"] != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; only 'silu' is")
    if hf.get("mlp_bias") or (arch != "Qwen2ForCausalLM" and hf.get("attention_bias")):
        raise ValueError(f"{arch} with attention_bias/mlp_bias is not supported")
    if arch == "Qwen2ForCausalLM" and hf["use_sliding_window"]:
        raise ValueError(
            "Qwen2 with use_sliding_window=true (sliding attention on some layers) is not supported"
        )
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if arch != "MistralForCausalLM" and layer_types != {"full_attention"}:
        raise ValueError(f"layer_types {sorted(layer_types)} not supported; only full_attention")
    num_heads = int(hf["num_attention_heads"])
    theta, scaling = _rope(hf, HF_DEFAULTS[arch]["rope_theta"])
    window = hf.get("sliding_window") if arch == "MistralForCausalLM" else None
    kv_heads = hf["num_key_value_heads"]
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        embed_dim=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=num_heads if kv_heads is None else int(kv_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
        mlp_dim=int(hf["intermediate_size"]),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf["rms_norm_eps"]),
        qkv_bias=arch == "Qwen2ForCausalLM",
        tie_embeddings=bool(hf["tie_word_embeddings"]),
        sliding_window=None if window is None else int(window),
        max_position=int(hf["max_position_embeddings"]),
        hf_architecture=arch,
    )


def hf_config(cfg: ModelConfig, *, dtype: str = "bfloat16") -> dict[str, Any]:
    """The HF `config.json` dict for `cfg` (written in the transformers 4.x form, which 5.x and
    serving stacks also read). `dtype` is the weights' dtype on disk."""
    arch = cfg.hf_architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"hf_architecture={arch!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    # HF's Qwen2 always has q/k/v biases and Llama/Mistral never do (Llama's attention_bias
    # would also add an o_proj bias that this model lacks).
    if cfg.qkv_bias != (arch == "Qwen2ForCausalLM"):
        raise ValueError(f"qkv_bias={cfg.qkv_bias} cannot be expressed as {arch}")
    if cfg.sliding_window is not None and arch != "MistralForCausalLM":
        raise ValueError(
            f"sliding_window={cfg.sliding_window} needs MistralForCausalLM, not {arch}"
        )
    rope_scaling = None
    if cfg.rope_scaling is not None:
        rope_scaling = {"rope_type": "llama3"} | dataclasses.asdict(cfg.rope_scaling)
        rope_scaling["original_max_position_embeddings"] = rope_scaling.pop("original_max_position")
    config = {
        "architectures": [arch],
        "model_type": SUPPORTED_ARCHITECTURES[arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": dtype,
    }
    if arch == "LlamaForCausalLM":
        config |= {"attention_bias": False, "mlp_bias": False}
    elif arch == "MistralForCausalLM":
        # Written even when None: an absent key would mean MistralConfig's 4096-token window.
        config["sliding_window"] = cfg.sliding_window
    else:
        config |= {
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": cfg.num_layers,
        }
    return config
