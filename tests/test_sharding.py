"""Sharding: mesh and rules, a GRPO update on three 8-device meshes against one device, and the
golden per-parameter partition specs of configs/mistral7b.py.

The sampler's sharded greedy decoding is covered by
tests/test_sampler.py::test_sharded_greedy_equals_single_device (same three meshes).

Regenerate the golden file after an intended sharding change with

    python tests/test_sharding.py --regenerate
"""

import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zero_rl import sharding
from zero_rl.config import base_config, load_config, model_config
from zero_rl.models import (
    DecodeCache,
    ModelConfig,
    abstract_params,
    create_model,
    logical_axes,
    param_shardings,
)
from zero_rl.optim import make_optimizer, sharded_init
from zero_rl.rl import LossConfig
from zero_rl.train.batch import Rollout, rollout_logprobs
from zero_rl.train.update import UpdateOptions, update

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(_REPO, "tests", "golden", "mistral7b_partition_specs.json")
GOLDEN_CONFIG = "configs/mistral7b.py"
# Besides the config's own mesh (its rules on its v5p-256, fsdp=64,tensor=2): pure FSDP on a
# v5p-128, more tensor parallelism, and tensor=16, which exceeds the 8 KV heads, so the KV
# projections fall back to replication over that axis.
OTHER_GOLDEN_MESHES = ("fsdp=64", "fsdp=32,tensor=4", "data=4,fsdp=8,tensor=16")

MESHES = [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}]
# vocab and mlp divisible by tensor=2 so every weight kind is actually split.
CFG = ModelConfig(
    vocab_size=64,
    embed_dim=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    qkv_bias=True,
)
PROMPT_LEN, RESPONSE_LEN, PROMPTS, SAMPLES = 8, 8, 8, 4
OPTS = UpdateOptions(
    loss=LossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.05, entropy_coef=0.01),
    num_minibatches=2,
    num_microbatches=2,
    logprob_chunk=4,
)
# Differences come only from the order of cross-device sums in float32. Measured on the three
# meshes: metrics within 7e-6 relative, params within 3e-8 absolute after an update of 5e-2.
METRIC_RTOL, PARAM_ATOL = 5e-5, 1e-6
LOGPROB_ATOL = 1e-5  # measured: 4.8e-7 on each mesh, against log-probs of about -4


def test_make_mesh_fills_the_minus_one_axis_and_names_errors():
    assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh({"data": 2, "tensor": 2}).shape) == {
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 2})
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh({"tensor": 3})


def test_a_partial_mesh_warns_on_one_process_and_fails_on_several(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="zero_rl.sharding"):
        mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2})
    assert mesh.size == 4 and "uses 4 of the 8 devices" in caplog.text
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="names 4 devices, but this 2-process job has 8"):
        sharding.make_mesh({"fsdp": 2, "tensor": 2})
    assert sharding.make_mesh({"tensor": 2}).size == 8  # a -1 axis still takes every device


def test_logical_rules_use_each_mesh_axis_once_and_drop_non_dividing_axes():
    assert sharding.logical_to_spec(("batch", "length")) == PartitionSpec(("data", "fsdp"), None)
    # "embed" maps to fsdp, already taken by "batch": it must not be reused.
    assert sharding.logical_to_spec(("batch", "embed")) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'experts' has no sharding rule"):
        sharding.logical_to_spec(("experts",))
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    # 2 KV heads cannot be split 4 ways: replicated along that axis instead of an error.
    s = sharding.named_sharding(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh)
    assert s.spec == PartitionSpec("fsdp")
    s = sharding.named_sharding(("embed", "heads", "head_dim"), (32, 4, 8), mesh)
    assert s.spec == PartitionSpec("fsdp", "tensor")
    # Canonical like jit's output shardings: size-1 mesh axes and trailing Nones are dropped.
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    s = sharding.named_sharding(("batch", "heads", "head_dim"), (8, 4, 8), mesh)
    assert s.spec == PartitionSpec("fsdp")


def test_optimizer_state_is_sharded_like_the_params():
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    abstract = abstract_params(CFG, mesh)[1]
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype, device=x.sharding), abstract)
    tx, _ = make_optimizer(base_config().optim, 10)
    opt_state = sharded_init(tx, abstract)(params)
    adam = opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(moments)):
            assert m.sharding == p.sharding
            assert m.addressable_shards[0].data.shape == p.addressable_shards[0].data.shape
    with pytest.raises(ValueError, match="NamedSharding"):
        sharded_init(tx, abstract_params(CFG)[1])


def test_batch_rows_round_trip_through_a_global_array():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    rows_bt = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    global_bt = sharding.global_batch(rows_bt, batch)
    assert global_bt.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert global_bt.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(sharding.local_rows(global_bt, batch), rows_bt)
    np.testing.assert_array_equal(sharding.gather_to_host(global_bt), rows_bt)


def _rollout(params_single) -> Rollout:
    """A hand-built rollout: ragged left-padded prompts, ragged responses, behaviour log-probs
    near the policy's (so some ratios clip), one group masked out."""
    rng = np.random.default_rng(0)
    rows = PROMPTS * SAMPLES
    prompt_lens = np.repeat(rng.integers(2, PROMPT_LEN + 1, size=PROMPTS), SAMPLES)
    response_lens = rng.integers(1, RESPONSE_LEN + 1, size=rows)
    tokens = rng.integers(1, CFG.vocab_size, size=(rows, PROMPT_LEN + RESPONSE_LEN))
    cols = np.arange(PROMPT_LEN + RESPONSE_LEN)[None, :]
    first = PROMPT_LEN - prompt_lens[:, None]
    end = PROMPT_LEN + response_lens[:, None]
    valid = (cols >= first) & (cols < end)
    positions = np.where(valid, cols - first, -1).astype(np.int32)
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    mask = valid[:, PROMPT_LEN:].astype(np.float32)
    old = rollout_logprobs(
        nnx.graphdef(create_model(CFG)),
        params_single,
        jnp.asarray(tokens),
        jnp.asarray(positions),
        prompt_len=PROMPT_LEN,
        num_chunks=2,
        chunk=4,
    )
    old = np.asarray(old) * mask

    def noisy(scale):
        return ((old + rng.normal(scale=scale, size=old.shape)) * mask).astype(np.float32)

    group_mask = np.ones(PROMPTS, np.float32)
    group_mask[3] = 0.0
    return Rollout(
        tokens_bt=tokens,
        positions_bt=positions,
        mask_bn=mask,
        sampler_logprobs_bn=noisy(0.05),
        old_logprobs_bn=noisy(0.3),
        ref_logprobs_bn=noisy(0.3),
        rewards_pg=rng.integers(0, 2, size=(PROMPTS, SAMPLES)).astype(np.float32),
        group_mask_p=group_mask,
    )


def _tx():
    # SGD keeps updated params linear in the gradients, so the comparison measures gradient
    # agreement (Adam's first step, g / (|g| + eps), flips sign on near-zero entries).
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))


def _run_update(params, rollout: Rollout, mesh=None):
    graphdef = nnx.graphdef(create_model(CFG))
    tx = _tx()
    opt_state = jax.jit(tx.init)(params) if mesh is None else sharded_init(tx, params)(params)
    rng = jax.random.key(7)
    # (old_values_bn stays None: GRPO has no critic.)
    if mesh is None:
        rollout = jax.tree.map(jnp.asarray, rollout)
    else:
        batch = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
        rollout = jax.tree.map(lambda x: sharding.global_batch(x, batch), rollout)
    with sharding.activation_sharding(mesh):
        params, _, metrics = update(
            graphdef, tx, params, opt_state, rollout, rng, opts=OPTS, prompt_len=PROMPT_LEN
        )
    return params, metrics


@pytest.fixture(scope="module")
def single_device():
    """(initial params, rollout, updated params, metrics) on one device."""
    params = nnx.split(create_model(CFG, seed=3))[1]
    initial = jax.device_get(params)
    rollout = _rollout(params)
    new_params, metrics = _run_update(jax.tree.map(jnp.copy, params), rollout)
    return initial, rollout, jax.device_get(new_params), jax.device_get(metrics)


@pytest.mark.parametrize("axes", MESHES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_grpo_update_on_a_mesh_equals_one_device(single_device, axes):
    initial, rollout, expected_params, expected = single_device
    mesh = sharding.make_mesh(axes)
    # The same initial values as the single-device run, laid out as create_model(mesh=) would.
    params = jax.device_put(initial, param_shardings(CFG, mesh))
    in_shardings = [x.sharding for x in jax.tree.leaves(params)]
    new_params, metrics = _run_update(params, rollout, mesh)

    assert abs(float(expected["loss"])) > 1e-3 and float(expected["grad_norm"]) > 1e-3
    for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac_low", "clip_frac_high"):
        np.testing.assert_allclose(metrics[key], expected[key], rtol=METRIC_RTOL, err_msg=key)
    moved = 0.0
    for got, want, before in zip(
        jax.tree.leaves(new_params), jax.tree.leaves(expected_params), jax.tree.leaves(initial)
    ):
        np.testing.assert_allclose(np.asarray(got), want, atol=PARAM_ATOL, rtol=0)
        moved = max(moved, float(np.max(np.abs(want - before))))
    assert moved > 100 * PARAM_ATOL  # the update is large against the tolerance
    # Every parameter comes back with a sharding equal (not merely equivalent) to the one it
    # went in with: the next step reuses this executable, and so does a resumed run.
    for x, before in zip(jax.tree.leaves(new_params), in_shardings):
        assert x.sharding == before, (x.sharding, before)


@pytest.mark.parametrize("axes", MESHES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_rollout_logprobs_on_a_mesh_equal_one_device(single_device, axes):
    """The old/reference log-prob pass (vocabulary split over tensor, rows over data x fsdp)."""
    initial, rollout, _, _ = single_device
    graphdef = nnx.graphdef(create_model(CFG))
    kwargs = dict(prompt_len=PROMPT_LEN, num_chunks=2, chunk=4)
    tokens_bt, positions_bt = rollout.tokens_bt, rollout.positions_bt
    expected = np.asarray(
        rollout_logprobs(
            graphdef, jax.tree.map(jnp.asarray, initial), jnp.asarray(tokens_bt),
            jnp.asarray(positions_bt), **kwargs,
        )
    )  # fmt: skip
    mesh = sharding.make_mesh(axes)
    batch = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    with sharding.activation_sharding(mesh):
        got = rollout_logprobs(
            graphdef, jax.device_put(initial, param_shardings(CFG, mesh)),
            sharding.global_batch(tokens_bt, batch), sharding.global_batch(positions_bt, batch),
            **kwargs,
        )  # fmt: skip
    assert got.sharding.spec == sharding.named_sharding(("batch", "length"), got.shape, mesh).spec
    valid = rollout.mask_bn > 0
    assert np.all(expected[valid] < 0) and np.std(expected[valid]) > 0.1
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], rtol=0, atol=LOGPROB_ATOL)


def _golden_specs() -> dict:
    """Partition spec of every mistral-7b parameter, the KV cache and the batch, per mesh;
    shapes only (jax.eval_shape), nothing allocated."""
    from zero_rl.tools.plan import abstract_mesh, parse_mesh  # noqa: PLC0415

    config = load_config(os.path.join(_REPO, GOLDEN_CONFIG))
    cfg, rules = model_config(config), sharding.rules_from_config(config.sharding)
    own_mesh = ",".join(f"{k}={v}" for k, v in config.mesh.items() if v != 1)
    _, abstract = abstract_params(cfg)
    axes = dict(nnx.to_flat_state(logical_axes(abstract)))
    out = {"config": GOLDEN_CONFIG, "config_mesh": own_mesh, "params": {}, "activations": {}}
    for path, leaf in nnx.to_flat_state(abstract):
        out["params"]["/".join(path)] = {
            "shape": list(_value(leaf).shape),
            "dtype": str(_value(leaf).dtype),
            "logical_axes": list(axes[path]),
            "specs": {},
        }
    for mesh_text in (own_mesh, *OTHER_GOLDEN_MESHES):
        mesh = abstract_mesh(parse_mesh(mesh_text))
        _, sharded = abstract_params(cfg, mesh, rules)
        for path, leaf in nnx.to_flat_state(sharded):
            spec = _value(leaf).sharding.spec
            out["params"]["/".join(path)]["specs"][mesh_text] = _spec_json(spec)
        cache_shape = (cfg.num_layers, 8192, cfg.num_kv_heads, 9216, cfg.head_dim)
        out["activations"][mesh_text] = {
            "kv_cache": _spec_json(
                sharding.named_sharding(DecodeCache.LOGICAL_AXES, cache_shape, mesh, rules).spec
            ),
            "batch": _spec_json(
                sharding.named_sharding(("batch", "length"), (8192, 9216), mesh, rules).spec
            ),
        }
    return out


def _value(leaf):
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _spec_json(spec: PartitionSpec) -> list:
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def test_mistral7b_partition_specs_match_the_golden_file():
    with open(GOLDEN) as f:
        golden = json.load(f)
    current = _golden_specs()
    changed = [
        name
        for name in sorted(set(golden["params"]) | set(current["params"]))
        if golden["params"].get(name) != current["params"].get(name)
    ]
    hint = "if intended, run: python tests/test_sharding.py --regenerate"
    assert not changed, f"partition specs changed for {changed[:5]}...; {hint}"
    assert golden == current, hint
    # Hand-checked anchors: FSDP splits every weight's embed axis 64 ways; on the config's own
    # mesh tensor=2 also splits heads, KV heads and the MLP, and the cache's KV heads.
    assert golden["config_mesh"] == "fsdp=64,tensor=2"
    q = golden["params"]["layers/attn/q_proj"]
    assert q["logical_axes"] == ["layers", "embed", "heads", "head_dim"]
    assert q["specs"]["fsdp=64"] == [None, "fsdp"]
    assert q["specs"]["fsdp=32,tensor=4"] == [None, "fsdp", "tensor"]
    own = {name: p["specs"]["fsdp=64,tensor=2"] for name, p in golden["params"].items()}
    assert own["layers/attn/k_proj"] == own["layers/mlp/up_proj"] == [None, "fsdp", "tensor"]
    # The decode cache is [layers, batch, kv_heads, slots, head_dim]: KV heads over tensor.
    assert golden["activations"]["fsdp=64,tensor=2"]["kv_cache"] == [None, "fsdp", "tensor"]
    k = golden["params"]["layers/attn/k_proj"]["specs"]["data=4,fsdp=8,tensor=16"]
    assert k == [None, "fsdp"]  # 8 KV heads do not split 16 ways


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python {sys.argv[0]} --regenerate")
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    specs = _golden_specs()
    # One line per parameter, so a sharding change reads as a one-line diff.
    lines = [f' "config": {json.dumps(specs["config"])},',
             f' "config_mesh": {json.dumps(specs["config_mesh"])},', ' "params": {']  # fmt: skip
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in specs["params"].items()]
    lines[-1] = lines[-1].rstrip(",")
    lines += [" },", ' "activations": {']
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in specs["activations"].items()]
    lines[-1] = lines[-1].rstrip(",")
    text = "{\n" + "\n".join(lines) + "\n }\n}\n"
    assert json.loads(text) == specs
    with open(GOLDEN, "w") as f:
        f.write(text)
    print(f"wrote {GOLDEN}")
