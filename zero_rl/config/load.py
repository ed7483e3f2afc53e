"""Reading configs: a config file with `--config.a.b=v` style overrides, a run's saved
config.json, the checks of keys and values (`validate`), and which differences a rerun of a
workdir may have."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from zero_rl.config.build import loss_config, reward_config, sampling_options
from zero_rl.config.schema import base_config, sft_run_config
from zero_rl.data.curriculum import SCHEDULES as CURRICULUM_SCHEDULES
from zero_rl.data.curriculum import Curriculum
from zero_rl.data.difficulty import MATH_LEVELS
from zero_rl.data.sft_formats import FORMAT_NAMES
from zero_rl.data.synthetic import SOURCE as SYNTHETIC_SOURCE
from zero_rl.optim import SCHEDULES
from zero_rl.rewards import DATASETS, POLICIES
from zero_rl.rl import CRITICS, ESTIMATORS
from zero_rl.rl.masking import check_choice
from zero_rl.tasks import is_task, make_task


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file, applies "a.b=value" overrides, and locks it.

    For notebooks; the launchers use absl's `config_flags` for the same files.
    """
    config = _load_module_config(path)
    for item in overrides:
        key, _, raw = item.partition("=")
        set_override(config, key.strip(), raw.strip())
    config.lock()
    return config


def set_override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Sets `config.<key>` from a string, with an error listing the valid keys at that level.

    The string is parsed as the key's declared type (that of its default, or the `field_type`
    of a None default such as `rl.loss.dual_clip`); "none" sets a None-default key back to None.
    """
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise KeyError(_unknown(".".join(parents[:i]), name, node))
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(_unknown(".".join(parents), leaf, node))
    field_type = node.get_ref(leaf).get_type()
    node[leaf] = parse_value(key, raw, field_type, nullable=node[leaf] is None)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(key: str, raw: str, field_type: type, *, nullable: bool = False):
    """`raw` as a `field_type` value (bool, int, float or str); a clear error otherwise."""
    text = raw.strip()
    if nullable and text.lower() in ("none", "null"):
        return None
    try:
        if field_type is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(f"expected one of {_TRUE + _FALSE}")
            return text.lower() in _TRUE
        if field_type is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if field_type is float:
            return float(text)
    except ValueError as err:
        raise ValueError(f"config.{key}={raw!r} is not a {field_type.__name__} ({err})") from None
    if field_type is str:
        return raw
    raise ValueError(
        f"config.{key} holds a {field_type.__name__}; it cannot be set from the string {raw!r}"
    )


def check_command_line(
    argv: Sequence[str], default_config: str, moved: Mapping[str, str] | None = None
) -> None:
    """Checks `--config.a.b=v` arguments against the config file's keys before absl parses
    them, so that a typo fails with the list of valid keys (absl only names the bad key).
    `moved` maps flags that became config keys to those keys: using one raises, naming it."""
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if moved and name in moved:
            raise KeyError(
                f"--{name} is a config key now: use --config.{moved[name]}=... (the run's "
                "saved config is the one set of sampling settings)"
            )
    path = default_config
    for arg in argv:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    config = _load_module_config(path)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config.") :].split("=", 1)[0]
        node, parts = config, key.split(".")
        for i, name in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                raise KeyError(_unknown(".".join(parts[:i]), name, node))
            node = node[name]


def exit_on_bad_command_line(
    argv: Sequence[str], default_config: str, moved: Mapping[str, str] | None = None
) -> None:
    """`check_command_line` for a launcher, run before its flags are defined (config_flags
    applies `--config.*` overrides at once and would name a mistyped key without the valid
    ones): a bad argument prints `error: ...` to stderr and exits with status 2."""
    try:
        check_command_line(argv, default_config, moved)
    except (KeyError, FileNotFoundError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        sys.exit(2)


def _load_module_config(path: str) -> ml_collections.ConfigDict:
    config_path, _, arg = path.partition(":")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config file {config_path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_zero_rl_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a trainer run was started with, read back from `workdir/config.json`.

    The saved values go over today's defaults (`base_config()`), so a key added to the schema
    since the run has its default. The result is unlocked, to be changed before use.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} is not a run directory: it has no config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        is_hf = isinstance(saved, dict) and "model_type" in saved
        hint = " (an HF model's config? use --hf_model)" if is_hf else ""
        raise ValueError(f"{path} is not a trainer run's config{hint}: it has no model section")
    config = base_config()
    _overlay(config, saved)
    return config


def _overlay(node: ml_collections.ConfigDict, saved: Mapping[str, Any]) -> None:
    for key, value in saved.items():
        if isinstance(node.get(key), ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(node[key], value)
        else:
            node[key] = value


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """`config.<dotted key> = value`, as a `--config.a.b=v` override sets it."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def _unknown(prefix: str, name: str, node: ml_collections.ConfigDict) -> str:
    where = f"config.{prefix.rstrip('.')}" if prefix else "config"
    return f"unknown key {name!r} in {where}; valid keys: {sorted(node.keys())}"


def check_keys(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None
) -> None:
    """Raises if `config` has keys that `reference` (default `base_config()`) does not: a typo
    in a config file."""

    def walk(node, ref, prefix):
        for key in node:
            if key not in ref:
                raise KeyError(_unknown(prefix, key, ref))
            child, ref_child = node[key], ref[key]
            if isinstance(child, ml_collections.ConfigDict) and prefix + key != "model.dims":
                walk(child, ref_child, f"{prefix}{key}.")

    walk(config, base_config() if reference is None else reference, "")


def _validate_tasks(config: ml_collections.ConfigDict) -> None:
    """The settings of a task that data.train / data.eval names, checked by the task itself."""
    for key in ("train", "eval"):
        name = config.data[key]
        if is_task(name):
            try:
                make_task(name, config.data.tasks[name].to_dict())
            except ValueError as error:
                raise ValueError(f"config.data.tasks.{name}: {error}") from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks what can be checked from the config alone, so that a bad value fails before the
    minutes of set-up (loading, SFT) rather than at the first update or evaluation."""
    check_keys(config)
    rl, d = config.rl, config.data
    check_choice("rl.estimator", rl.estimator, ESTIMATORS)
    check_choice("rl.critic", rl.critic, CRITICS)
    check_choice("data.on_error", d.on_error, ("raise", "skip"))
    check_choice("reward.extraction", config.reward.extraction, POLICIES)
    check_choice("eval.extraction", config.eval.extraction, POLICIES)
    if d.difficulty:
        check_choice("data.difficulty", d.difficulty, tuple(MATH_LEVELS))
    if d.gold_format:
        check_choice("data.gold_format", d.gold_format, tuple(sorted(DATASETS)))
    _validate_curriculum(d.curriculum)
    _validate_tasks(config)
    for block, optim in (("optim", config.optim), ("sft.optim", config.sft.optim)):
        check_choice(f"{block}.schedule", optim.schedule, SCHEDULES)
    loss_config(config)  # LossConfig, RewardConfig and SamplingOptions check their own fields
    reward_config(config)
    sampling_options(config)
    sampling_options(config, evaluation=True)
    s, group = config.sampling, config.rl.num_samples
    if 0 < s.slots < group * min(s.prefill_prompts, config.rl.num_prompts):
        raise ValueError(
            f"config.sampling.slots={s.slots} cannot take one prefill of "
            f"sampling.prefill_prompts={s.prefill_prompts} prompts x rl.num_samples={group} "
            "(a prompt's samples start together from one prefill)"
        )
    for key in ("total_steps", "log_every", "rl.num_prompts", "rl.num_samples", "rl.minibatch_size",
                "rl.epochs", "rl.max_draws", "sampling.max_prompt_len",
                "sampling.max_new_tokens"):  # fmt: skip
        value = _get(config, key)
        if value < 1:
            raise ValueError(f"config.{key}={value} must be >= 1")
    for key in ("eval_every", "checkpoint_every", "data.eval_size", "eval.limit"):
        if _get(config, key) < 0:
            raise ValueError(f"config.{key}={_get(config, key)} must be >= 0")
    if config.eval.benchmarks and config.eval.temperature == 0 and config.eval.num_samples > 1:
        raise ValueError(
            f"eval.num_samples={config.eval.num_samples} with eval.temperature=0: greedy samples "
            "are all the same response; set eval.temperature > 0 or eval.num_samples=1"
        )
    # The best-by-eval checkpoint is chosen among saved steps: an eval at a step that is not
    # saved would be lost (and the kept "best" would not be the best evaluated policy).
    if config.eval_every and (
        not config.checkpoint_every or config.eval_every % config.checkpoint_every
    ):
        raise ValueError(
            f"eval_every={config.eval_every} must be a multiple of checkpoint_every="
            f"{config.checkpoint_every} (> 0) so that every evaluated step is saved and the "
            "best-by-eval checkpoint is kept; e.g. set checkpoint_every to eval_every"
        )


def _validate_curriculum(block: ml_collections.ConfigDict) -> None:
    """`data.curriculum`: a known schedule whose buckets and stages parse and agree. Whether
    every bucket has examples is checked once the data is read."""
    check_choice("data.curriculum.schedule", block.schedule, ("none", *CURRICULUM_SCHEDULES))
    if block.schedule != "none":
        Curriculum.from_config(block)


def validate_sft(config: ml_collections.ConfigDict) -> None:
    """`validate` for `launch/sft.py`'s config (`sft_run_config()`'s schema)."""
    check_keys(config, sft_run_config())
    check_choice("data.on_error", config.data.on_error, ("raise", "skip"))
    data = config.data
    check_choice("data.format", data.format, FORMAT_NAMES)
    if data.format != "fields" and data.source == SYNTHETIC_SOURCE:
        raise ValueError(
            f"data.format={data.format!r} reads a data file, but data.source is the "
            f"{SYNTHETIC_SOURCE!r} task; set data.source to the dataset's file"
        )
    for key in ("prompt_field", "response_field"):
        # A dataset format knows its own fields: a field name set with one would be ignored.
        if data.format != "fields" and data[key] != sft_run_config().data[key]:
            raise ValueError(
                f"data.{key}={data[key]!r} is only read with data.format='fields', not "
                f"{data.format!r}; leave it unset"
            )
    check_choice("sft.overflow", config.sft.overflow, ("error", "truncate"))
    check_choice("sft.optim.schedule", config.sft.optim.schedule, SCHEDULES)
    check_choice("export_dtype", config.export_dtype, ("float32", "bfloat16", "float16"))
    for key in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "checkpoint_every",
                "logits_chunk"):  # fmt: skip
        if config.sft[key] < 1:
            raise ValueError(f"config.sft.{key}={config.sft[key]} must be >= 1")


# Keys a rerun in the same workdir may change: bookkeeping, evaluation, and the memory and
# layout settings that change no result (mesh, sharding, sampler calls, chunking, remat).
_RERUN_SAFE = (
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "async_checkpoint",
    "num_sample_texts", "progress_bars", "hardware", "eval.", "mesh.", "sharding.",
    "reward.num_workers", "sampling.prompts_per_call", "sampling.decode_segments",
    "sampling.slots", "sampling.prefill_prompts", "sampling.drain_phases",
    "sampling.eval_max_new_tokens", "model.remat", "model.attention", "model.attention_chunk",
    "rl.microbatch_size", "rl.logprob_chunk", "sft.log_every", "sft.checkpoint_every",
)  # fmt: skip


def rerun_differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changes that alter results, harmless changes) between a workdir's saved config.json and
    the config of a rerun, both as JSON dicts; each as "key: old -> new". A key the saved config
    lacks (a newer schema) is harmless; total_steps is, under a constant learning rate."""
    old, new = _flatten(saved), _flatten(current)
    safe = _RERUN_SAFE + (("total_steps",) if new.get("optim.schedule") == "constant" else ())
    changed, harmless = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        line = f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        is_safe = key not in old or any(key == p or p.endswith(".") and key.startswith(p)
                                        for p in safe)  # fmt: skip
        (harmless if is_safe else changed).append(line)
    return changed, harmless


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key != "model.dims":
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for name in key.split("."):
        node = node[name]
    return node
