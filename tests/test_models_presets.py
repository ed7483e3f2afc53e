"""Full-size presets, checked at no memory cost with `jax.eval_shape`."""

import math

import jax
import pytest

from zero_rl.models import PRESETS, abstract_params, get_preset
from zero_rl.models.hf import config_from_hf, hf_config


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
def test_hf_config_round_trips(name):
    cfg = get_preset(name)
    assert config_from_hf(hf_config(cfg)) == cfg


def test_get_preset_overrides_and_unknown_name():
    assert get_preset("qwen2.5-7b", remat="full").remat == "full"
    with pytest.raises(ValueError, match=r"unknown model preset 'qwen9'.*'mistral-7b'"):
        get_preset("qwen9")
