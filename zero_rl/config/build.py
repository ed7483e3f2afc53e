"""What a config builds: the model's structure, the data field mapping, the loss, reward and
sampling options, and where the tokenizer is."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

from zero_rl.config.schema import TINY_TOKENIZER, TINY_VOCAB_SIZE
from zero_rl.data.records import FieldMapping
from zero_rl.models import config_from_hf, config_mismatches, read_config_json
from zero_rl.models.config import ModelConfig, get_preset
from zero_rl.rewards import RewardConfig
from zero_rl.rl import LossConfig
from zero_rl.sampling.options import SamplingOptions


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
    """The run's ModelConfig: the HF checkpoint's architecture when `model.hf_path` is set (a
    preset or `model.dims` given too must agree with it, field by field), else the preset, else
    `model.dims` (`vocab_size` filling in a missing vocabulary size)."""
    m = config.model
    common = dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        attention=m.attention,
        attention_chunk=m.attention_chunk,
        value_head=config.rl.estimator == "gae",
        separate_critic=config.rl.estimator == "gae" and config.rl.critic == "separate",
    )
    if m.hf_path:
        # The checkpoint defines the network; a preset that disagrees (Qwen2.5-Math-7B's
        # rope_theta 1e4 under the qwen2.5-7b preset's 1e6) would run it silently wrong.
        hf_cfg = config_from_hf(read_config_json(m.hf_path))
        dims = m.dims.to_dict()
        given = {f"model.preset={m.preset!r}": m.preset and get_preset(m.preset),
                 "model.dims": dims and hf_cfg.replace(**dims)}  # fmt: skip
        for name, expected in given.items():
            if expected and (diff := config_mismatches(expected, hf_cfg)):
                raise ValueError(
                    f"{name} does not match the checkpoint {m.hf_path}/config.json "
                    f"(config vs checkpoint): {'; '.join(diff)}. Clear it (the checkpoint "
                    "defines the architecture) or use the matching checkpoint"
                )
        return hf_cfg.replace(**common)
    if m.preset:
        return get_preset(m.preset, **common)
    dims = dict(m.dims.to_dict())
    if vocab_size is not None:
        dims.setdefault("vocab_size", vocab_size)
    return ModelConfig(**(dims | common))


def field_mapping(config: ml_collections.ConfigDict) -> FieldMapping:
    """How the records of a data file named by data.train / data.eval become Examples."""
    d = config.data
    return FieldMapping(
        question_field=d.question_field, answer_field=d.answer_field,
        answer_from_solution=d.answer_from_solution, solution_field=d.solution_field,
        level_field=d.level_field or None, id_field=d.id_field or None,
        gold_format=d.gold_format or None,
    )  # fmt: skip


def loss_config(config: ml_collections.ConfigDict) -> LossConfig:
    return LossConfig(**config.rl.loss.to_dict())


def reward_config(config: ml_collections.ConfigDict, *, evaluation: bool = False) -> RewardConfig:
    """`config.reward`; with `evaluation`, grading as evaluation does (`eval.extraction`)."""
    reward = RewardConfig(**config.reward.to_dict())
    if evaluation:
        reward = dataclasses.replace(reward, extraction=config.eval.extraction)
    return reward


def sampling_options(
    config: ml_collections.ConfigDict,
    *,
    evaluation: bool = False,
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
) -> SamplingOptions:
    """`config.sampling` as the `SamplingOptions` every sampling caller takes: the rollout's,
    or with `evaluation` the evaluation's (`eval.temperature`, `eval.top_p`,
    `sampling.eval_max_new_tokens`). Stops are the template's (`template_stops`)."""
    s = config.sampling
    options = SamplingOptions(
        max_prompt_len=s.max_prompt_len, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        stop_token_ids=tuple(stop_token_ids), stop_strings=tuple(stop_strings),
        engine=s.engine, slots=s.slots, prefill_prompts=s.prefill_prompts,
        drain_phases=s.drain_phases,
        prompts_per_call=s.prompts_per_call, decode_segments=s.decode_segments,
    )  # fmt: skip
    if not evaluation:
        return options
    return options.replace(
        temperature=config.eval.temperature, top_p=config.eval.top_p,
        max_new_tokens=s.eval_max_new_tokens or s.max_new_tokens,
    )  # fmt: skip


def tokenizer_path(config: ml_collections.ConfigDict, hf_model: str | None = None) -> str:
    """Where the policy's tokenizer is: `config.tokenizer.path`, else the HF directory
    (`hf_model`, then `config.model.hf_path`), else - for a custom `model.dims` model without a
    vocabulary size of its own, as the tiny config is - the tiny addition tokenizer the trainer
    uses. A preset model without a tokenizer is an error, not a silent tiny vocabulary."""
    path = config.tokenizer.path or hf_model or config.model.hf_path
    if path:
        return path
    if config.model.preset:
        raise ValueError(
            f"no tokenizer for model.preset={config.model.preset!r}: set "
            "--config.tokenizer.path=... or --config.model.hf_path=... (the HF model the run "
            "started from); the built-in tiny tokenizer only fits the tiny model"
        )
    vocab = config.model.dims.get("vocab_size")
    if vocab is not None and vocab != TINY_VOCAB_SIZE:
        raise ValueError(
            f"no tokenizer for a model.dims model with vocab_size={vocab}: set "
            f"--config.tokenizer.path=...; the built-in tiny tokenizer has {TINY_VOCAB_SIZE}"
        )
    return TINY_TOKENIZER
