"""The shipped real-model configs against the slice each names in `hardware`: the config's own
mesh is the planned one and splits its batch evenly, and the next smaller slice cannot hold the
run's state on any mesh, so the named slice is the smallest (tests/test_plan.py compiles the
0.5B and 7B runs on theirs and checks that they fit). Shapes only, nothing compiled."""

import glob
import os

import pytest

from zero_rl.config import load_config
from zero_rl.tools import plan
from zero_rl.train.run import update_options

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Slice sizes N of "<generation>-<N>" in the common power-of-two shapes, smallest first.
SLICE_SIZES = {
    "v4": (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    "v5p": (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
    "v5litepod": (1, 4, 8, 16, 32, 64, 128, 256),
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
}


def _model_configs() -> list[str]:
    """Every config that names a slice (the tiny CPU configs, RL and SFT, name none)."""
    paths = sorted(glob.glob(os.path.join(_REPO, "configs", "*.py")))
    return [os.path.basename(p) for p in paths if load_config(p).get("hardware")]


MODEL_CONFIGS = _model_configs()


def _config(name):
    return load_config(os.path.join(_REPO, "configs", name))


def _next_smaller(accelerator: str) -> str | None:
    generation, n = accelerator.rsplit("-", 1)
    smaller = [s for s in SLICE_SIZES[generation] if s < int(n)]
    return f"{generation}-{smaller[-1]}" if smaller else None


def test_every_real_model_config_is_covered():
    assert len(MODEL_CONFIGS) >= 10 and {"mistral7b.py", "qwen2_5_0_5b.py"} <= set(MODEL_CONFIGS)
    assert _next_smaller("v5p-256") == "v5p-128" and _next_smaller("v5p-8") is None
    assert _next_smaller("v6e-4") == "v6e-1"


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_mesh_is_the_planned_mesh_and_splits_the_batch(name):
    config = _config(name)
    accelerator, hardware_axes = plan.parse_hardware(config.hardware)
    chips, _ = plan.tpu_slice(accelerator)
    planned = plan.abstract_mesh(hardware_axes, chips)
    own = plan.abstract_mesh(dict(config.mesh), chips)  # raises unless it uses all the chips
    assert dict(own.shape) == dict(planned.shape), (dict(config.mesh), config.hardware)
    update_options(config, own)  # raises unless prompts and (micro)batches split evenly


def test_a_mesh_that_does_not_split_the_microbatch_is_rejected():
    """Why the 128-chip configs need tensor=2: fsdp=128 does not divide 64-row microbatches."""
    config = _config("mistral7b.py")
    with pytest.raises(ValueError, match="microbatch_size=64 must be a multiple of 128"):
        update_options(config, plan.abstract_mesh({"fsdp": -1}, 128))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_next_smaller_slice_cannot_hold_the_state(name):
    """On any mesh of C chips the fullest chip holds at least 1/C of the state (params,
    optimiser state, reference, KV cache, rollout), computed here on one device. The slices
    were sized for the static sampler's whole-batch KV cache; the continuous engine's 256
    slots need far less (the Mistral-7B recipe plans to fit 16 x 80 GB, tests/test_plan.py),
    so the bound is checked with the static sampler."""
    config = _config(name)
    config.sampling.engine = "static"
    accelerator, _ = plan.parse_hardware(config.hardware)
    smaller = _next_smaller(accelerator)
    if smaller is None:
        pytest.skip(f"{accelerator} is the smallest slice of its generation")
    chips, hbm = plan.tpu_slice(smaller)
    total = sum(plan.state_bytes(config, plan.abstract_mesh({"fsdp": 1}, 1)).values())
    assert total / chips > hbm, f"{name}: {smaller} may hold {total / chips / plan.GB:.0f} GB"
