"""The RL run's config schema (every key with its default) and builders from it.

Config files in `configs/` start from `base_config()` and change what they need, so every run
has the same keys: a locked config turns a typo on the command line into an error.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from zero_rl import sharding
from zero_rl.data.difficulty import MATH_LEVELS, default_difficulty
from zero_rl.data.records import FieldMapping
from zero_rl.models import config_from_hf, config_mismatches, read_config_json
from zero_rl.models.config import ModelConfig, get_preset
from zero_rl.rewards import DATASETS, RewardConfig
from zero_rl.rl import ESTIMATORS, LossConfig
from zero_rl.rl.masking import check_choice
from zero_rl.sampling.options import SamplingOptions
from zero_rl.train.optim import SCHEDULES

TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny_addition.model")
TINY_VOCAB_SIZE = 48  # of TINY_TOKENIZER


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """AdamW settings (see zero_rl.train.optim.make_optimizer): the RL defaults, overridden."""
    base = dict(
        lr=5e-7,
        schedule="constant",
        warmup_steps=0,
        end_lr_ratio=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=1.0,
        mu_dtype="float32",
    )
    return ml_collections.ConfigDict(base | overrides)


def base_config() -> ml_collections.ConfigDict:
    """Defaults: SimpleRL-Zoo's GRPO recipe where it has one."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.log_every = 1
    # Every eval step must be a checkpoint step (eval_every a multiple of checkpoint_every):
    # the best-by-eval checkpoint is kept from the checkpoints that carry an eval/accuracy.
    c.eval_every = 10
    c.checkpoint_every = 10
    c.keep_checkpoints = 3
    c.async_checkpoint = True
    c.num_sample_texts = 4  # responses written to TensorBoard each log step (several prompts)
    c.progress_bars = True  # tqdm bars for evaluation (process 0, interactive terminals only)
    # The smallest slice this run is planned to fit, "<accelerator> [mesh <axes>][; notes]",
    # e.g. "v5p-256 mesh fsdp=64,tensor=2": `python launch/plan.py --config=...` checks it.
    c.hardware = ""

    c.model = ml_collections.ConfigDict()
    c.model.preset = ""  # a name from zero_rl.models.PRESETS, or "" to use `dims`
    c.model.dims = ml_collections.ConfigDict()  # ModelConfig fields for a custom model
    c.model.hf_path = ""  # HF checkpoint directory to start from ("" = random init)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    # "chunked" bounds attention scores to [batch, heads, attention_chunk, length] blocks.
    c.model.attention = "xla"
    c.model.attention_chunk = 512

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # "" = the HF checkpoint directory's tokenizer

    c.data = ml_collections.ConfigDict()
    c.data.train = "gsm8k_train"  # a benchmark name, "synthetic_addition", or a file path
    c.data.eval = "math500"
    c.data.eval_size = 0  # 0 = the whole eval set
    c.data.difficulty = ""  # "", "easy", "medium" or "hard" (SimpleRL-Zoo levels)
    # How records of a data file (data.train / data.eval given as a path) become examples.
    c.data.question_field = "problem"
    # MATH train has no answer field: the gold answer is the last \boxed{} of the solution.
    # False reads `answer_field` instead (GSM8K-style or pre-extracted answers).
    c.data.answer_from_solution = True
    c.data.answer_field = "answer"
    c.data.solution_field = "solution"
    c.data.level_field = "level"  # MATH's "Level 3" (needed by data.difficulty)
    c.data.id_field = ""  # "" = ids from line / row numbers
    c.data.gold_format = ""  # a zero_rl.rewards.DATASETS name (e.g. "gsm8k"), "" = plain answers
    c.data.on_error = "raise"  # or "skip": bad records are left out, counted and logged
    c.data.template = ""  # "" = the model family's SimpleRL-Zoo default

    # Periodic benchmark evaluation (besides `eval/accuracy` on data.eval at every eval step).
    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks = ""  # comma-separated, e.g. "gsm8k,math500"; "" = none
    c.eval.num_samples = 1
    c.eval.temperature = 0.0
    c.eval.top_p = 1.0
    c.eval.limit = 0  # examples per benchmark (0 = all)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_prompt_len = 1024
    c.sampling.max_new_tokens = 8192
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.eval_max_new_tokens = 0  # 0 = max_new_tokens
    # Prompts per sampler call (0 = all rl.num_prompts at once). The KV cache holds
    # prompts_per_call * rl.num_samples rows: lower it when long responses do not fit.
    c.sampling.prompts_per_call = 0
    # The decode loop in this many segments; each attends over the cache slots filled by the
    # end of it, not the whole cache (same outputs; the decode program is that many times
    # larger to compile). Speeds up long responses; 4 in the 8K SimpleRL-Zoo configs.
    c.sampling.decode_segments = 1
    # The rollout engine: "continuous" (a pool of sampling.slots rows, a row whose response
    # ends refilled with the next prompt inside the compiled loop) or "static" (each call
    # decodes until its longest response ends; prompts_per_call and decode_segments apply).
    c.sampling.engine = "continuous"
    # Rows of the engine's KV cache, slots x (max_prompt_len + max_new_tokens) tokens: the
    # knob that bounds rollout memory (0 = one per response of the batch, no refilling). A
    # multiple of the batch-parallel devices, at least rl.num_samples.
    c.sampling.slots = 0
    c.sampling.prefill_prompts = 1  # prompts prefilled together when slots free up
    # Once no prompt waits, the pool halves (live rows moved) each time half of it is idle,
    # up to this many times: the longest responses then run in a smaller pool.
    c.sampling.drain_phases = 3

    c.rl = ml_collections.ConfigDict()
    c.rl.num_prompts = 1024
    c.rl.num_samples = 8
    c.rl.minibatch_size = 256  # rows (responses) per optimiser step
    c.rl.microbatch_size = 0  # rows per gradient-accumulation step (0 = whole minibatch)
    c.rl.epochs = 1
    c.rl.estimator = "grpo"  # or dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, gae (PPO)
    # PPO ("gae"): the critic is a value head on the policy's trunk ("shared") or on a trunk of
    # its own ("separate", initialised as a copy of the policy's).
    c.rl.critic = "shared"
    c.rl.gamma = 1.0
    c.rl.lam = 1.0
    c.rl.vf_coef = 0.5
    c.rl.vf_clip = 0.2
    c.rl.adv_eps = 1e-6
    c.rl.adv_std_ddof = 1  # of the GRPO group std: 1 = unbiased, like torch.std in verl/OpenRLHF
    c.rl.kl_in_reward_coef = 0.0  # > 0 puts the KL into the reward instead of the loss
    c.rl.dynamic_sampling = False
    c.rl.max_draws = 3
    c.rl.overlong_filter = False
    c.rl.logprob_chunk = 512
    c.rl.loss = ml_collections.ConfigDict(
        dict(
            clip_low=0.2,
            clip_high=0.2,
            dual_clip=ml_collections.FieldReference(None, field_type=float),
            ratio_level="token",
            aggregation="token_mean",
            norm_len=ml_collections.FieldReference(None, field_type=int),
            kl_coef=1e-4,
            kl_estimator="k3",
            kl_clamp=ml_collections.FieldReference(None, field_type=float),
            entropy_coef=0.001,
            tis_cap=ml_collections.FieldReference(None, field_type=float),
        )
    )

    c.reward = ml_collections.ConfigDict(
        dict(
            mode="correctness",
            correct_reward=1.0,
            incorrect_reward=0.0,
            correct_boxed_reward=1.0,
            correct_unboxed_reward=0.5,
            wrong_boxed_reward=-0.5,
            no_answer_reward=-1.0,
            format_penalty=0.0,
            last_number_fallback=False,
            timeout_s=2.0,
            num_workers=2,
            overlong_cache_len=0,
            overlong_factor=1.0,
        )
    )

    c.optim = optimizer_config()

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # Logical axis -> mesh axes ("data,fsdp"; "" = replicated), used for params, optimiser
    # state, reference, KV cache, batches and activations of the RL stage.
    c.sharding = ml_collections.ConfigDict(sharding.rules_to_config())

    # Optional SFT stage that makes the base model first (the tiny default uses it).
    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 0
    c.sft.batch_size = 32
    c.sft.seq_len = 64
    c.sft.grad_accum = 1
    c.sft.seed = 0
    c.sft.log_every = 50
    c.sft.checkpoint_every = 1000
    c.sft.carry_error_rate = 0.0  # synthetic task only: how often the teacher forgets a carry
    c.sft.optim = optimizer_config(lr=1e-3, schedule="cosine", warmup_steps=20, grad_clip=1.0)
    return c


def simplerl_zoo_config(
    preset: str, *, max_response_len: int = 8192, hardware: str = ""
) -> ml_collections.ConfigDict:
    """SimpleRL-Zoo's recipe for one base model: GRPO, 1024 prompts x 8 samples, PPO minibatch
    256 prompts, lr 5e-7 constant, grad clip 1.0, k3 KL loss 1e-4 (1e-3 above 14B), entropy
    0.001, clip 0.2, temperature 1.0, 1024 prompt / `max_response_len` response tokens.

    Training data: SimpleRL-Zoo builds its sets from the MATH train split (not shipped; point
    `data.train` at a MATH-format JSONL/parquet with problem, solution/answer and level).
    """
    c = base_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    # 9,216-token sequences: [heads, 9216, 9216] score blocks would dominate memory.
    c.model.attention = "chunked"
    c.hardware = hardware
    c.total_steps = 100
    c.eval_every = 5
    c.checkpoint_every = 5
    c.data.train = "data/math_train.jsonl"
    c.data.answer_from_solution = True  # MATH train: the solution's last \boxed{}
    c.data.gold_format = "math"
    c.data.eval = "math500"
    c.data.difficulty = default_difficulty(preset)  # the set SimpleRL-Zoo trained it on
    c.data.template = ""  # the family default (zero_rl.data.default_template)
    c.sampling.max_prompt_len = 1024
    c.sampling.max_new_tokens = max_response_len
    c.sampling.decode_segments = 4  # the static engine's
    # 256 slots: 32 responses per slot at 1024 x 8, and 16 slots per device on 16 devices (a
    # 7B model's 256 x 9216-token cache is 309 GB in bf16).
    c.sampling.slots = 256
    c.rl.num_prompts = 1024
    c.rl.num_samples = 8
    c.rl.minibatch_size = 256 * 8  # 256 prompts' groups per optimiser step: 4 updates per step
    c.rl.microbatch_size = 64
    c.rl.loss.kl_coef = 1e-3 if get_preset(preset).num_params() > 15e9 else 1e-4
    c.rl.loss.kl_estimator = "k3"
    c.rl.loss.entropy_coef = 0.001
    c.rl.loss.clip_low = 0.2
    c.rl.loss.clip_high = 0.2
    c.optim.lr = 5e-7
    c.optim.schedule = "constant"
    c.optim.grad_clip = 1.0
    return c


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


def check_command_line(argv: Sequence[str], default_config: str) -> None:
    """Checks `--config.a.b=v` arguments against the config file's keys before absl parses
    them, so that a typo fails with the list of valid keys (absl only names the bad key)."""
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


def _load_module_config(path: str) -> ml_collections.ConfigDict:
    config_path, _, arg = path.partition(":")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config file {config_path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_zero_rl_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _unknown(prefix: str, name: str, node: ml_collections.ConfigDict) -> str:
    where = f"config.{prefix}" if prefix else "config"
    return f"unknown key {name!r} in {where}; valid keys: {sorted(node.keys())}"


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Raises if `config` has keys that `base_config()` does not (a typo in a config file)."""

    def walk(node, ref, prefix):
        for key in node:
            if key not in ref:
                raise KeyError(_unknown(prefix, key, ref))
            child, ref_child = node[key], ref[key]
            if isinstance(child, ml_collections.ConfigDict) and prefix + key != "model.dims":
                walk(child, ref_child, f"{prefix}{key}.")

    walk(config, base_config(), "")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks what can be checked from the config alone, so that a bad value fails before the
    minutes of set-up (loading, SFT) rather than at the first update or evaluation."""
    check_keys(config)
    rl, d = config.rl, config.data
    check_choice("rl.estimator", rl.estimator, (*ESTIMATORS, "gae"))
    check_choice("rl.critic", rl.critic, ("shared", "separate"))
    check_choice("data.on_error", d.on_error, ("raise", "skip"))
    if d.difficulty:
        check_choice("data.difficulty", d.difficulty, tuple(MATH_LEVELS))
    if d.gold_format:
        check_choice("data.gold_format", d.gold_format, tuple(sorted(DATASETS)))
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
    if config.rl.critic not in ("shared", "separate"):
        raise ValueError(f"rl.critic={config.rl.critic!r}; valid: shared, separate")
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


def reward_config(config: ml_collections.ConfigDict) -> RewardConfig:
    return RewardConfig(**config.reward.to_dict())


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
