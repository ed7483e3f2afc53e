"""Model hyper-parameters and the published presets of the SimpleRL-Zoo base models."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("xla", "chunked")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3's frequency-dependent RoPE scaling ("rope_type": "llama3" in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Dimensions of one decoder-only transformer (Llama / Mistral / Qwen2 family).

    `dtype` is the compute dtype (activations, matmuls); `param_dtype` the storage dtype.
    `sliding_window` is Mistral-7B-v0.1's local attention span, None for full attention.
    """

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    max_position: int = 4096
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    # "xla": one `jax.nn.dot_product_attention` over the whole sequence ([batch, heads, t, s]
    # scores). "chunked": queries in chunks of `attention_chunk`, so long sequences (8K
    # responses) hold one [batch, heads, chunk, s] block of scores at a time.
    attention: str = "xla"
    attention_chunk: int = 512
    # A scalar value head (PPO's critic): on the policy's final hidden state, or with
    # `separate_critic` on a second stack of layers of its own (initialised like the policy's),
    # which reads the policy's token embedding without training it.
    value_head: bool = False
    separate_critic: bool = False
    # The HF `architectures` entry written on export ("LlamaForCausalLM", ...).
    hf_architecture: str = "LlamaForCausalLM"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.separate_critic and not self.value_head:
            raise ValueError("separate_critic=True needs value_head=True")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; valid: {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}; valid: {ATTENTION_IMPLS}")
        if self.attention_chunk <= 0:
            raise ValueError(f"attention_chunk={self.attention_chunk} must be positive")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"{name}={getattr(self, name)!r}; valid: float32, bfloat16, float16"
                )

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The dtype of activations and matmul inputs (`dtype`)."""
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        """The dtype parameters are stored in (`param_dtype`)."""
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` (field=value); `rope_scaling` may be given as a dict."""
        if isinstance(changes.get("rope_scaling"), dict):
            changes["rope_scaling"] = RopeScaling(**changes["rope_scaling"])
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count from the dimensions alone (checked against `jax.eval_shape`)."""
        d, h, k, hd, f = (
            self.embed_dim,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.mlp_dim,
        )
        attn = d * h * hd * 2 + d * k * hd * 2 + (h * hd + 2 * k * hd if self.qkv_bias else 0)
        per_layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        value = d + 1 if self.value_head else 0
        critic = self.num_layers * per_layer + d if self.separate_critic else 0
        return self.num_layers * per_layer + embed + d + value + critic


_LLAMA3_SCALING = RopeScaling(8.0, 1.0, 4.0, 8192)


def _qwen2(**kw) -> ModelConfig:
    base = dict(
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        qkv_bias=True,
        head_dim=128,
        max_position=32768,
        hf_architecture="Qwen2ForCausalLM",
    )
    return ModelConfig(**(base | kw))


# Published dimensions, from each model's HF config.json. The second value is the parameter
# count the model card reports, which tests/test_models_presets.py checks.
PRESETS: dict[str, tuple[ModelConfig, float]] = {
    "llama3.1-8b": (
        ModelConfig(
            vocab_size=128_256, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
            head_dim=128, mlp_dim=14_336, rope_theta=500_000.0, rope_scaling=_LLAMA3_SCALING,
            rms_norm_eps=1e-5, max_position=131_072,
        ),
        8.03e9,
    ),
    "mistral-7b": (
        ModelConfig(
            vocab_size=32_000, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
            head_dim=128, mlp_dim=14_336, rope_theta=10_000.0, rms_norm_eps=1e-5,
            sliding_window=4096, max_position=32_768, hf_architecture="MistralForCausalLM",
        ),
        7.24e9,
    ),
    "mistral-small-24b": (
        ModelConfig(
            vocab_size=131_072, embed_dim=5120, num_layers=40, num_heads=32, num_kv_heads=8,
            head_dim=128, mlp_dim=32_768, rope_theta=100_000_000.0, rms_norm_eps=1e-5,
            max_position=32_768, hf_architecture="MistralForCausalLM",
        ),
        23.6e9,
    ),
    "deepseek-math-7b": (
        ModelConfig(
            vocab_size=102_400, embed_dim=4096, num_layers=30, num_heads=32, num_kv_heads=32,
            head_dim=128, mlp_dim=11_008, rope_theta=10_000.0, rms_norm_eps=1e-6,
            max_position=4096,
        ),
        6.91e9,
    ),
    "qwen2.5-0.5b": (
        _qwen2(vocab_size=151_936, embed_dim=896, num_layers=24, num_heads=14, num_kv_heads=2,
               head_dim=64, mlp_dim=4864, tie_embeddings=True),
        0.494e9,
    ),
    "qwen2.5-1.5b": (
        _qwen2(vocab_size=151_936, embed_dim=1536, num_layers=28, num_heads=12, num_kv_heads=2,
               mlp_dim=8960, tie_embeddings=True, max_position=131_072),
        1.54e9,
    ),
    "qwen2.5-3b": (
        _qwen2(vocab_size=151_936, embed_dim=2048, num_layers=36, num_heads=16, num_kv_heads=2,
               mlp_dim=11_008, tie_embeddings=True),
        3.09e9,
    ),
    "qwen2.5-7b": (
        _qwen2(vocab_size=152_064, embed_dim=3584, num_layers=28, num_heads=28, num_kv_heads=4,
               mlp_dim=18_944, max_position=131_072),
        7.62e9,
    ),
    "qwen2.5-14b": (
        _qwen2(vocab_size=152_064, embed_dim=5120, num_layers=48, num_heads=40, num_kv_heads=8,
               mlp_dim=13_824, rms_norm_eps=1e-5, max_position=131_072),
        14.7e9,
    ),
    "qwen2.5-32b": (
        _qwen2(vocab_size=152_064, embed_dim=5120, num_layers=64, num_heads=40, num_kv_heads=8,
               mlp_dim=27_648, rms_norm_eps=1e-5, max_position=131_072),
        32.5e9,
    ),
    "qwen2.5-math-7b": (
        _qwen2(vocab_size=152_064, embed_dim=3584, num_layers=28, num_heads=28, num_kv_heads=4,
               mlp_dim=18_944, rope_theta=10_000.0, max_position=4096),
        7.62e9,
    ),
}  # fmt: skip


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Returns the published config for `name` (e.g. "qwen2.5-7b"), with optional overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name][0].replace(**overrides)


# How a model is run, not what it computes: two configs that differ only here load the same
# checkpoint. Every other field is part of the architecture.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention", "attention_chunk", "value_head",
                  "separate_critic")  # fmt: skip
ARCHITECTURE_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in RUNTIME_FIELDS
)


def _same(a: Any, b: Any) -> bool:
    # Floats as written in two config files ("1e-05" and a float32 round trip of it) compare
    # equal to a relative 1e-6; everything else exactly.
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def config_mismatches(expected: ModelConfig, actual: ModelConfig) -> list[str]:
    """One `"field: expected vs actual"` line per architecture field on which two configs differ.

    Meant to check a checkpoint's config (`actual`, e.g. from `config_from_hf`) against the preset
    a run names (`expected`): dimensions, vocabulary, RoPE theta and scaling, RMSNorm epsilon,
    q/k/v bias, tied embeddings, sliding window, maximum position and HF architecture
    (`ARCHITECTURE_FIELDS`). Fields that only say how the model is run (`RUNTIME_FIELDS`: dtypes,
    remat, attention implementation, value head) are ignored. An empty list means the two
    describe the same network.
    """
    return [
        f"{name}: {getattr(expected, name)!r} vs {getattr(actual, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if not _same(getattr(expected, name), getattr(actual, name))
    ]
