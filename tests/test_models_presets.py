"""Full-size presets (checked at no memory cost with `jax.eval_shape`) and the config.json mapping,
against the published config.json files and `transformers`' own reading of them."""

import math

import jax
import numpy as np
import pytest
import transformers

from zero_rl.models import (
    ARCHITECTURE_FIELDS,
    PRESETS,
    abstract_params,
    config_from_hf,
    config_mismatches,
    get_preset,
    hf_config,
    read_config_json,
)

_LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip


def _qwen2(**kw):
    # Keys every Qwen2.5 config.json has with the same value.
    common = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "use_sliding_window": False,
              "torch_dtype": "bfloat16", "bos_token_id": 151643,
              "eos_token_id": 151643}  # fmt: skip
    return common | kw


# The published config.json of each preset's model (its architecture keys, as on the Hub).
PUBLISHED_CONFIGS = {
    "llama3.1-8b": {  # meta-llama/Llama-3.1-8B
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
        "mlp_bias": False, "attention_bias": False, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "vocab_size": 128256,
    },
    "mistral-7b": {  # mistralai/Mistral-7B-v0.1
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000,
    },
    "mistral-small-24b": {  # mistralai/Mistral-Small-24B-Base-2501
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
        "head_dim": 128, "hidden_size": 5120, "intermediate_size": 32768,
        "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 40,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 100000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 131072,
    },
    "deepseek-math-7b": {  # deepseek-ai/deepseek-math-7b-base
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 4096,
        "num_attention_heads": 32, "num_hidden_layers": 30, "num_key_value_heads": 32,
        "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 102400,
    },
    "qwen2.5-0.5b": _qwen2(
        hidden_size=896, intermediate_size=4864, max_position_embeddings=32768,
        max_window_layers=24, num_attention_heads=14, num_hidden_layers=24,
        num_key_value_heads=2, sliding_window=32768, tie_word_embeddings=True,
        vocab_size=151936,
    ),
    "qwen2.5-1.5b": _qwen2(
        hidden_size=1536, intermediate_size=8960, max_position_embeddings=131072,
        max_window_layers=28, num_attention_heads=12, num_hidden_layers=28,
        num_key_value_heads=2, sliding_window=131072, tie_word_embeddings=True,
        vocab_size=151936,
    ),
    "qwen2.5-3b": _qwen2(
        hidden_size=2048, intermediate_size=11008, max_position_embeddings=32768,
        max_window_layers=36, num_attention_heads=16, num_hidden_layers=36,
        num_key_value_heads=2, sliding_window=32768, tie_word_embeddings=True,
        vocab_size=151936,
    ),
    "qwen2.5-7b": _qwen2(
        hidden_size=3584, intermediate_size=18944, max_position_embeddings=131072,
        max_window_layers=28, num_attention_heads=28, num_hidden_layers=28,
        num_key_value_heads=4, sliding_window=131072, tie_word_embeddings=False,
        vocab_size=152064,
    ),
    "qwen2.5-14b": _qwen2(
        hidden_size=5120, intermediate_size=13824, max_position_embeddings=131072,
        max_window_layers=48, num_attention_heads=40, num_hidden_layers=48,
        num_key_value_heads=8, rms_norm_eps=1e-05, sliding_window=131072,
        tie_word_embeddings=False, vocab_size=152064,
    ),
    "qwen2.5-32b": _qwen2(
        hidden_size=5120, intermediate_size=27648, max_position_embeddings=131072,
        max_window_layers=64, num_attention_heads=40, num_hidden_layers=64,
        num_key_value_heads=8, rms_norm_eps=1e-05, sliding_window=131072,
        tie_word_embeddings=False, vocab_size=152064,
    ),
    "qwen2.5-math-7b": _qwen2(
        hidden_size=3584, intermediate_size=18944, max_position_embeddings=4096,
        max_window_layers=28, num_attention_heads=28, num_hidden_layers=28,
        num_key_value_heads=4, rope_theta=10000.0, sliding_window=4096,
        tie_word_embeddings=False, vocab_size=152064,
    ),
}  # fmt: skip


def test_every_preset_has_its_published_config():
    assert set(PUBLISHED_CONFIGS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_count_matches_published(name):
    cfg, published = PRESETS[name]
    _, params = abstract_params(cfg)
    leaves = jax.tree.leaves(params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    count = sum(math.prod(x.shape) for x in leaves)
    assert count == cfg.num_params()
    assert abs(count - published) / published < 0.01, f"{name}: {count:,} vs {published:,.0f}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_its_published_config(name):
    cfg = get_preset(name)
    assert config_mismatches(cfg, config_from_hf(PUBLISHED_CONFIGS[name])) == []
    assert config_from_hf(PUBLISHED_CONFIGS[name]) == cfg
    # `transformers` reading the same file (its defaults, its rope handling) agrees too.
    hf = transformers.AutoConfig.for_model(**PUBLISHED_CONFIGS[name])
    got = (hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.num_attention_heads,
           hf.num_key_value_heads, hf.vocab_size, hf.max_position_embeddings, hf.rms_norm_eps,
           hf.tie_word_embeddings, hf.rope_parameters["rope_theta"])  # fmt: skip
    want = (cfg.embed_dim, cfg.mlp_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.vocab_size, cfg.max_position, cfg.rms_norm_eps, cfg.tie_embeddings,
            cfg.rope_theta)  # fmt: skip
    assert got == want
    assert getattr(hf, "head_dim", None) in (None, cfg.head_dim)
    assert config_from_hf(hf.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trips(name):
    cfg = get_preset(name)
    assert config_from_hf(hf_config(cfg)) == cfg


def test_exported_config_reads_back_in_transformers():
    cfg = get_preset("llama3.1-8b")
    hf = transformers.AutoConfig.for_model(**hf_config(cfg))
    assert (hf.hidden_size, hf.num_key_value_heads, hf.head_dim) == (4096, 8, 128)
    assert config_from_hf(hf.to_dict()) == cfg


def test_get_preset_overrides_and_unknown_name():
    assert get_preset("qwen2.5-7b", remat="full").remat == "full"
    with pytest.raises(ValueError, match=r"unknown model preset 'qwen9'.*'mistral-7b'"):
        get_preset("qwen9")


# The five sizes only; everything else comes from the defaults.
_MINIMAL = dict(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                num_attention_heads=32)  # fmt: skip
_CONFIG_CLASSES = {
    "LlamaForCausalLM": transformers.LlamaConfig,
    "MistralForCausalLM": transformers.MistralConfig,
    "Qwen2ForCausalLM": transformers.Qwen2Config,
}


@pytest.mark.parametrize("arch", sorted(_CONFIG_CLASSES))
def test_missing_keys_take_the_transformers_defaults(arch):
    ours = config_from_hf({"architectures": [arch], **_MINIMAL})
    reference = _CONFIG_CLASSES[arch](**_MINIMAL).to_dict() | {"architectures": [arch]}
    assert ours == config_from_hf(reference)
    # The defaults that differ between the families, written out.
    expected = {
        "LlamaForCausalLM": dict(num_kv_heads=32, sliding_window=None, max_position=2048),
        "MistralForCausalLM": dict(num_kv_heads=8, sliding_window=4096, max_position=131_072),
        "Qwen2ForCausalLM": dict(num_kv_heads=32, sliding_window=None, max_position=32_768),
    }[arch]
    assert {k: getattr(ours, k) for k in expected} == expected
    assert (ours.rope_theta, ours.rms_norm_eps, ours.tie_embeddings) == (10_000.0, 1e-6, False)
    assert (ours.head_dim, ours.rope_scaling) == (16, None)


def test_explicit_nulls_mean_what_they_mean_in_transformers():
    mistral = {"architectures": ["MistralForCausalLM"], **_MINIMAL}
    assert config_from_hf(mistral | {"sliding_window": None}).sliding_window is None
    llama = {"architectures": ["LlamaForCausalLM"], **_MINIMAL, "num_key_value_heads": None}
    assert config_from_hf(llama).num_kv_heads == 32
    assert config_from_hf(mistral | {"num_key_value_heads": None}).num_kv_heads == 32


_BAD_CONFIGS = [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported HF architecture GPT2LMHeadModel"),
    ({"architectures": [], "model_type": "gemma"}, "model_type='gemma'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling.*yarn"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'.*supported.*llama3"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"intermediate_size": None}, r"lacks \['intermediate_size'\]"),
]


@pytest.mark.parametrize(("change", "message"), _BAD_CONFIGS)
def test_config_from_hf_rejects(change, message):
    hf = {k: v for k, v in (PUBLISHED_CONFIGS["llama3.1-8b"] | change).items() if v is not None}
    with pytest.raises(ValueError, match=message):
        config_from_hf(hf)


def test_config_from_hf_rejects_qwen2_sliding_window():
    hf = PUBLISHED_CONFIGS["qwen2.5-7b"] | {"use_sliding_window": True}
    with pytest.raises(ValueError, match="use_sliding_window"):
        config_from_hf(hf)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"qkv_bias": True}, "qkv_bias=True cannot be expressed as LlamaForCausalLM"),
        ({"sliding_window": 8}, "sliding_window=8 needs MistralForCausalLM"),
        ({"hf_architecture": "PhiForCausalLM"}, "hf_architecture='PhiForCausalLM'"),
    ],
)
def test_hf_config_rejects_inexpressible(changes, message):
    with pytest.raises(ValueError, match=message):
        hf_config(get_preset("llama3.1-8b", **changes))


def test_read_config_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no config.json in {tmp_path}"):
        read_config_json(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 4096,')
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'} is not valid JSON"):
        read_config_json(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json holds a JSON list, not an object"):
        read_config_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text('{"vocab_size": 8}')
    assert read_config_json(tmp_path) == {"vocab_size": 8}


# One change per architecture field, each to a value the base preset does not have.
_ARCHITECTURE_CHANGES = {
    "vocab_size": 151_936, "embed_dim": 4096, "num_layers": 30, "num_heads": 32,
    "num_kv_heads": 7, "head_dim": 64, "mlp_dim": 11_008, "rope_theta": 10_000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position": 8192},
    "rms_norm_eps": 1e-5, "qkv_bias": False, "tie_embeddings": True, "sliding_window": 4096,
    "max_position": 4096, "hf_architecture": "LlamaForCausalLM",
}  # fmt: skip


def test_architecture_changes_cover_every_architecture_field():
    assert set(_ARCHITECTURE_CHANGES) == set(ARCHITECTURE_FIELDS)


@pytest.mark.parametrize("field", sorted(_ARCHITECTURE_CHANGES))
def test_config_mismatches_names_the_changed_field(field):
    base = get_preset("qwen2.5-7b")
    changed = base.replace(**{field: _ARCHITECTURE_CHANGES[field]})
    (line,) = config_mismatches(base, changed)
    assert line == f"{field}: {getattr(base, field)!r} vs {getattr(changed, field)!r}"


def test_config_mismatches_ignores_how_the_model_is_run():
    base = get_preset("qwen2.5-7b")
    run = base.replace(dtype="bfloat16", param_dtype="bfloat16", remat="full",
                       attention="chunked", attention_chunk=128, value_head=True,
                       separate_critic=True)  # fmt: skip
    assert config_mismatches(base, run) == []
    # An epsilon that went through float32 on the way is the same epsilon.
    eps = base.replace(rms_norm_eps=float(np.float32(base.rms_norm_eps)))
    assert eps.rms_norm_eps != base.rms_norm_eps and config_mismatches(base, eps) == []


def test_config_mismatches_on_a_wrong_checkpoint():
    """Qwen2.5-Math-7B's checkpoint under the Qwen2.5-7B preset: same shapes, different RoPE."""
    math_checkpoint = config_from_hf(PUBLISHED_CONFIGS["qwen2.5-math-7b"])
    assert config_mismatches(get_preset("qwen2.5-7b"), math_checkpoint) == [
        "rope_theta: 1000000.0 vs 10000.0",
        "max_position: 131072 vs 4096",
    ]
