"""Logical-axis rules as config: round trip, validation, and their effect on the layout."""

import jax
import pytest

from zero_rl import sharding
from zero_rl.config import base_config, load_config, set_override
from zero_rl.models import abstract_params, get_preset
from zero_rl.tools import plan


def test_rules_round_trip_through_config():
    section = sharding.rules_to_config()
    assert section["batch"] == "data,fsdp" and section["length"] == ""
    assert sharding.rules_from_config(section) == sharding.DEFAULT_RULES
    from_config = sharding.rules_from_config(base_config().sharding)  # keys come back sorted
    assert dict(from_config) == dict(sharding.DEFAULT_RULES)


def test_rules_errors_name_the_problem():
    section = sharding.rules_to_config()
    with pytest.raises(ValueError, match=r"'model' not in mesh axes|\['model'\]"):
        sharding.rules_from_config(section | {"embed": "model"})
    del section["mlp"]
    with pytest.raises(ValueError, match=r"lack logical axes \['mlp'\]"):
        sharding.rules_from_config(section)


def test_config_rules_change_the_parameter_layout():
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    cfg = get_preset("qwen2.5-0.5b")
    config = base_config()
    set_override(config, "sharding.mlp", "")  # replicate MLP weights over the tensor axis
    default = abstract_params(cfg, mesh)[1]
    custom = abstract_params(cfg, mesh, sharding.rules_from_config(config.sharding))[1]
    gate = lambda p: p["layers"]["mlp"]["gate_proj"].get_value().sharding.spec  # noqa: E731
    assert gate(default) == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert gate(custom) == jax.sharding.PartitionSpec(None, "fsdp")


def test_planner_follows_the_config_rules():
    config = load_config("configs/qwen2_5_0_5b.py", ["sharding.embed=", "sharding.mlp="])
    mesh = plan.abstract_mesh({"fsdp": 8}, 8)
    replicated = plan.state_bytes(config, mesh)["params"]
    sharded = plan.state_bytes(load_config("configs/qwen2_5_0_5b.py"), mesh)["params"]
    assert replicated > 4 * sharded


def test_planner_shards_batches_by_the_config_batch_rule():
    """Rows split over data alone hold 4x the rows per device of data x fsdp (fsdp=4)."""
    mesh = plan.abstract_mesh({"data": 2, "fsdp": 4}, 8)
    default = load_config("configs/qwen2_5_0_5b.py")
    custom = load_config("configs/qwen2_5_0_5b.py", ["sharding.batch=data"])
    arrays = plan.step_arrays(custom, mesh)
    for x in (arrays.prompts_bt, arrays.rollout.tokens_bt, arrays.rollout.mask_bn):
        assert x.sharding.spec == jax.sharding.PartitionSpec("data", None)
    assert plan.step_arrays(default, mesh).rollout.tokens_bt.sharding.spec == (
        jax.sharding.PartitionSpec(("data", "fsdp"), None)
    )
    split, rows_over_data = plan.state_bytes(default, mesh), plan.state_bytes(custom, mesh)
    assert rows_over_data["rollout"] == 4 * split["rollout"]
    assert rows_over_data["kv_cache"] == 4 * split["kv_cache"]
    assert rows_over_data["params"] == split["params"]
