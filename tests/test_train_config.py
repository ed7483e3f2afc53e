"""The RL config: typed overrides, validation at start, the SimpleRL-Zoo recipe of every real
config, data files read with the config's field mapping, HF checkpoints against presets, and
reruns of a workdir under another config."""

import glob
import json
import logging
import os

import jax
import pytest
from flax import nnx

from zero_rl import config as config_lib
from zero_rl.config import load_config, set_override, validate
from zero_rl.data import RecordError
from zero_rl.describe import default_model_template, describe_run
from zero_rl.models import config_from_hf, from_hf, get_preset, hf_config
from zero_rl.sampling import SamplingOptions, template_stops
from zero_rl.sharding import make_mesh
from zero_rl.train import loop
from zero_rl.train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
RL_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                    if os.path.basename(p) != "sft_tiny.py")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    "key, raw, expected",
    [
        ("rl.loss.dual_clip", "3", 3.0),
        ("rl.loss.norm_len", "4096", 4096),
        ("rl.loss.kl_clamp", "10.5", 10.5),
        ("rl.loss.tis_cap", "2e0", 2.0),
        ("rl.loss.tis_cap", "none", None),
    ],
)
def test_none_default_keys_take_overrides_of_their_declared_type(key, raw, expected):
    config = load_config(TINY, [f"{key}={raw}"])
    value = config.rl.loss[key.rsplit(".", 1)[1]]
    assert value == expected and type(value) is type(expected)
    validate(config)
    assert getattr(config_lib.loss_config(config), key.rsplit(".", 1)[1]) == expected


@pytest.mark.parametrize(
    "key, raw, match",
    [
        ("rl.loss.norm_len", "12.5", "rl.loss.norm_len='12.5' is not a int"),
        ("rl.loss.dual_clip", "three", "is not a float"),
        ("rl.dynamic_sampling", "ture", "is not a bool"),
        ("total_steps", "none", "is not a int"),  # only None-default keys take "none"
    ],
)
def test_bad_override_values_are_errors_naming_the_key(key, raw, match):
    with pytest.raises(ValueError, match=match):
        load_config(TINY, [f"{key}={raw}"])


def test_overrides_parse_bools_ints_and_strings():
    config = load_config(TINY, ["rl.dynamic_sampling=true", "total_steps=1e2", "data.eval=x y"])
    assert config.rl.dynamic_sampling is True and config.total_steps == 100
    assert config.data.eval == "x y"
    set_override(config.unlock(), "rl.dynamic_sampling", "0")
    assert config.rl.dynamic_sampling is False


def test_unknown_override_key_lists_the_valid_ones():
    with pytest.raises(KeyError, match=r"unknown key 'kl_coeff' in config.rl.loss; valid keys: "
                                       r"\[.*'kl_coef'.*\]"):  # fmt: skip
        load_config(TINY, ["rl.loss.kl_coeff=0"])


# ---------------------------------------------------------------------------------------------
# Validation at start


@pytest.mark.parametrize(
    "override, match",
    [
        ("rl.estimator=grpo_plus", "unknown rl.estimator 'grpo_plus'; valid: 'grpo'"),
        ("rl.critic=joint", "unknown rl.critic"),
        ("data.on_error=ignore", "unknown data.on_error"),
        ("reward.extraction=loose", "unknown reward.extraction 'loose'; valid: 'strict'"),
        ("eval.extraction=any", "unknown eval.extraction 'any'; valid: 'strict', 'lenient'"),
        ("data.difficulty=extreme", "unknown data.difficulty"),
        ("optim.schedule=step", "unknown optim.schedule"),
        ("rl.loss.kl_estimator=k4", "kl_estimator"),
        ("rl.max_draws=0", "rl.max_draws=0 must be >= 1"),
        ("eval_every=5", "eval_every=5 must be a multiple of checkpoint_every=10"),
        ("checkpoint_every=0", "eval_every=10 must be a multiple of checkpoint_every=0"),
        ("sampling.engine=paged", r"sampling option engine='paged'; choose one of"),
        ("sampling.slots=-8", "sampling option slots must be >= 0, got -8"),
        (
            "sampling.slots=4",
            r"config.sampling.slots=4 cannot take one prefill of "
            r"sampling.prefill_prompts=1 prompts x rl.num_samples=8",
        ),
        (
            ["sampling.slots=8", "sampling.prefill_prompts=2"],
            r"config.sampling.slots=8 cannot take one prefill of sampling.prefill_prompts=2",
        ),
        ("sampling.prefill_prompts=0", "sampling option prefill_prompts must be >= 1"),
        ("sampling.drain_phases=-1", "sampling option drain_phases must be >= 0"),
        ("sampling.top_p=0", r"sampling option top_p must be in \(0, 1\], got 0"),
        ("eval.top_p=1.5", r"sampling option top_p must be in \(0, 1\], got 1.5"),
    ],
)
def test_validate_rejects_bad_values(override, match):
    overrides = override if isinstance(override, list) else [override]
    with pytest.raises(ValueError, match=match):
        validate(load_config(TINY, overrides))


def test_sampling_options_are_the_rollouts_and_the_evaluations():
    # The defaults: the continuous engine, one slot per response, one prompt per prefill.
    base = config_lib.base_config().sampling
    assert (base.engine, base.slots, base.prefill_prompts) == ("continuous", 0, 1)
    config = load_config(TINY, [
        "sampling.temperature=0.9", "sampling.top_p=0.95", "sampling.top_k=5",
        "sampling.engine=static", "sampling.slots=16", "sampling.prefill_prompts=2",
        "sampling.drain_phases=1", "sampling.prompts_per_call=8", "sampling.decode_segments=2",
        "sampling.eval_max_new_tokens=48", "eval.temperature=0.6", "eval.top_p=0.8",
    ])  # fmt: skip
    validate(config)
    rollout = config_lib.sampling_options(config, stop_token_ids=[2, 5], stop_strings=["</a>"])
    assert rollout == SamplingOptions(
        max_prompt_len=16, max_new_tokens=32, temperature=0.9, top_p=0.95, top_k=5,
        stop_token_ids=(2, 5), stop_strings=("</a>",), engine="static", slots=16,
        prefill_prompts=2, drain_phases=1, prompts_per_call=8, decode_segments=2,
    )  # fmt: skip
    evaluation = config_lib.sampling_options(
        config, evaluation=True, stop_token_ids=[2, 5], stop_strings=["</a>"]
    )
    assert evaluation == rollout.replace(temperature=0.6, top_p=0.8, max_new_tokens=48)
    # Without eval_max_new_tokens evaluation samples the rollout's length; no stops by default.
    tiny = config_lib.sampling_options(load_config(TINY), evaluation=True)
    assert (tiny.max_new_tokens, tiny.temperature, tiny.engine) == (32, 0.0, "continuous")
    assert tiny.stop_token_ids == () and tiny.stop_strings == ()


def test_the_run_samples_with_the_templates_stops(tmp_path):
    config = load_config(TINY, ["mesh.data=1", "data.template=r1_zero",
                                "sampling.max_prompt_len=512"])  # fmt: skip
    run = run_lib.resolve(config, str(tmp_path))
    stop_ids, stop_strings = template_stops(run.tokenizer, "r1_zero")
    assert stop_strings == ("</answer>",) and run.description.stop_token_ids == stop_ids
    assert run.sampling == config_lib.sampling_options(
        config, stop_token_ids=stop_ids, stop_strings=stop_strings
    )
    assert run.eval_sampling == config_lib.sampling_options(
        config, evaluation=True, stop_token_ids=stop_ids, stop_strings=stop_strings
    )


def test_greedy_benchmark_evaluation_takes_one_sample():
    greedy = ["eval.benchmarks=gsm8k", "eval.temperature=0", "eval.num_samples=4"]
    with pytest.raises(ValueError, match=r"eval.num_samples=4 with eval.temperature=0"):
        validate(load_config(TINY, greedy))
    validate(load_config(TINY, [*greedy[:2], "eval.num_samples=1"]))
    validate(load_config(TINY, [greedy[0], "eval.temperature=0.6", "eval.num_samples=4"]))


@pytest.mark.parametrize(
    "ok", [["eval_every=10", "checkpoint_every=5"], ["eval_every=0", "checkpoint_every=0"]]
)
def test_eval_steps_that_are_checkpoint_steps_are_valid(ok):
    validate(load_config(TINY, ok))


def test_train_fails_on_a_bad_value_before_any_set_up(tmp_path):
    with pytest.raises(ValueError, match="rl.estimator"):
        loop.train(load_config(TINY, ["rl.estimator=ppo"]), str(tmp_path))
    assert os.listdir(tmp_path) == []  # no config.json, no SFT stage


def test_unknown_benchmark_fails_before_the_sft_stage(tmp_path):
    config = load_config(TINY, ["eval.benchmarks=gsm8k,not_a_benchmark", "mesh.data=1"])
    with pytest.raises(ValueError, match="unknown benchmark 'not_a_benchmark'"):
        loop.train(config, str(tmp_path))
    assert not (tmp_path / "sft").exists()


def test_too_long_benchmark_prompts_fail_before_the_sft_stage(tmp_path):
    config = load_config(TINY, ["eval.benchmarks=gsm8k", "mesh.data=1", "eval.limit=4"])
    with pytest.raises(ValueError, match=r"eval.benchmarks gsm8k: 4 of 4 prompts are longer"):
        loop.train(config, str(tmp_path))
    assert not (tmp_path / "sft").exists()


# ---------------------------------------------------------------------------------------------
# SimpleRL-Zoo's recipe in every real config (arXiv:2503.18892, Sec. 2 and appendix)

RECIPE = {
    # config: (preset, difficulty, template, response tokens, KL coefficient)
    "deepseek_math_7b": ("deepseek-math-7b", "easy", "abel", 3072, 1e-4),
    "llama3_1_8b": ("llama3.1-8b", "easy", "abel", 8192, 1e-4),
    "mistral7b": ("mistral-7b", "easy", "abel", 8192, 1e-4),
    "mistral_small_24b": ("mistral-small-24b", "hard", "qwen_boxed", 8192, 1e-3),
    "qwen2_5_0_5b": ("qwen2.5-0.5b", "medium", "abel", 8192, 1e-4),
    "qwen2_5_1_5b": ("qwen2.5-1.5b", "hard", "abel", 8192, 1e-4),
    "qwen2_5_7b": ("qwen2.5-7b", "hard", "qwen_boxed", 8192, 1e-4),
    "qwen2_5_7b_one_host": ("qwen2.5-7b", "hard", "qwen_boxed", 8192, 1e-4),
    "qwen2_5_14b": ("qwen2.5-14b", "hard", "qwen_boxed", 8192, 1e-4),
    "qwen2_5_32b": ("qwen2.5-32b", "hard", "qwen_boxed", 8192, 1e-3),
    "qwen2_5_math_7b": ("qwen2.5-math-7b", "hard", "qwen_boxed", 3072, 1e-4),
}


def test_every_real_config_is_in_the_recipe_table():
    names = {os.path.splitext(os.path.basename(p))[0] for p in RL_CONFIGS}
    tiny = {name for name in names if name == "tiny" or name.endswith("_tiny")}  # CPU configs
    assert names - tiny == set(RECIPE)


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_real_config_carries_the_simplerl_zoo_recipe(name):
    c = load_config(os.path.join(REPO, "configs", f"{name}.py"))
    preset, difficulty, template, response_len, kl_coef = RECIPE[name]
    assert c.model.preset == preset
    assert c.data.difficulty == difficulty
    assert default_model_template(c.model.preset, None, None) == template and c.data.template == ""
    assert (c.rl.estimator, c.rl.num_prompts, c.rl.num_samples) == ("grpo", 1024, 8)
    assert c.rl.minibatch_size == 256 * c.rl.num_samples  # 256 prompts' groups per update
    assert c.rl.epochs == 1
    assert (c.optim.lr, c.optim.schedule, c.optim.warmup_steps) == (5e-7, "constant", 0)
    assert c.optim.grad_clip == 1.0
    assert (c.rl.loss.kl_estimator, c.rl.loss.kl_coef) == ("k3", kl_coef)
    assert c.rl.kl_in_reward_coef == 0.0
    assert c.rl.loss.entropy_coef == 0.001
    assert (c.rl.loss.clip_low, c.rl.loss.clip_high) == (0.2, 0.2)
    assert (c.sampling.temperature, c.sampling.top_p) == (1.0, 1.0)
    assert (c.sampling.max_prompt_len, c.sampling.max_new_tokens) == (1024, response_len)
    # The continuous engine's 256-slot pool bounds the rollout's KV cache.
    assert (c.sampling.engine, c.sampling.slots) == ("continuous", 256)
    # The 3K-response models are the 4K-context ones.
    assert (get_preset(preset).max_position == 4096) == (response_len == 3072)
    validate(c)


# ---------------------------------------------------------------------------------------------
# Data files

MATH_RECORDS = [
    {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "level": "Level 1"},
    {"problem": "What is $2+3$?", "solution": "So $\\boxed{5}$.", "level": "Level 2"},
    {"problem": "Find $x$ if $x^2=9$, $x>0$.", "solution": "$x=\\boxed{3}$", "level": "Level 3"},
    {"problem": "Simplify $\\frac{4}{8}$.", "solution": "$\\boxed{\\frac12}$", "level": "Level 4"},
    {"problem": "What is $7 \\cdot 6$?", "solution": "$\\boxed{42}$", "level": "Level 5"},
    {"problem": "Unknown level.", "solution": "$\\boxed{1}$", "level": "Level ?"},
]
# SimpleRL-Zoo's sets: easy = level 1 (+ GSM8K), medium = 1-4, hard = 3-5.
LEVELS = {"": [1, 2, 3, 4, 5, None], "easy": [1], "medium": [1, 2, 3, 4], "hard": [3, 4, 5]}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("path", RL_CONFIGS, ids=os.path.basename)
def test_every_config_reads_a_math_format_file(tmp_path, path):
    data = _write_jsonl(tmp_path / "math_train.jsonl", MATH_RECORDS)
    config = load_config(path, [f"data.train={data}", f"data.eval={data}"])
    train, held_out = run_lib.load_examples(config)
    math = [ex for ex in train if ex.source == "math_train"]
    assert [ex.level for ex in math] == LEVELS[config.data.difficulty]
    by_level = {ex.level: ex.answer for ex in math}
    assert by_level.get(5, "42") == "42" and by_level.get(1, "2") == "2"
    if config.data.difficulty == "easy":  # plus GSM8K's train split, first
        assert train[0].source == "gsm8k_train" and len(train) > 7000
    assert [ex.answer for ex in held_out] == ["2", "5", "3", "\\frac12", "42", "1"]


def test_answer_field_files_and_bad_records(tmp_path, caplog):
    records = [{"question": "1+1?", "answer": "#### 2", "uid": "a"},
               {"question": "2+2?", "answer": "", "uid": "b"},
               {"question": "3+3?", "answer": "#### 6", "uid": "c"}]  # fmt: skip
    data = _write_jsonl(tmp_path / "qa.jsonl", records)
    base = [f"data.train={data}", f"data.eval={data}", "data.answer_from_solution=false",
            "data.question_field=question", "data.id_field=uid",
            "data.gold_format=gsm8k"]  # fmt: skip
    with pytest.raises(RecordError, match=r"data.train: .*qa.jsonl:line 2: no answer.*on_error"):
        run_lib.load_examples(load_config(TINY, base))
    with caplog.at_level(logging.WARNING):
        train, _ = run_lib.load_examples(load_config(TINY, base + ["data.on_error=skip"]))
    assert [(ex.id, ex.answer) for ex in train] == [("qa/a", "2"), ("qa/c", "6")]
    assert "data.train: skipped 1 bad records" in caplog.text


def test_a_solution_less_file_hints_at_answer_from_solution(tmp_path):
    data = _write_jsonl(tmp_path / "qa.jsonl", [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(RecordError, match="no solution.*data.answer_from_solution=False"):
        run_lib.load_examples(load_config(TINY, [f"data.train={data}", f"data.eval={data}"]))


@pytest.mark.parametrize("name", ["data/math_train.jsonl", "math_train.parquet", "train.json"])
def test_a_missing_data_file_is_named(name):
    with pytest.raises(FileNotFoundError, match=f"data.train: no data file at '{name}'"):
        run_lib.load_examples(load_config(TINY, [f"data.train={name}"]))


def test_an_unknown_benchmark_name_is_not_taken_for_a_file():
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'"):
        run_lib.load_examples(load_config(TINY, ["data.train=gsm9k"]))


# ---------------------------------------------------------------------------------------------
# HF checkpoints and presets


def _hf_overrides(path, *extra):
    return [f"model.hf_path={path}", f"tokenizer.path={config_lib.TINY_TOKENIZER}", "mesh.data=1",
            "sft.steps=0", "data.template=", "sampling.max_prompt_len=64", *extra]  # fmt: skip


def test_the_checkpoint_defines_the_model_and_its_default_template(tiny_hf_dir, tmp_path):
    # tiny.py's own dims describe another network: they must be cleared to use the checkpoint.
    with pytest.raises(ValueError, match=r"model.dims does not match .*embed_dim: 64 vs 32"):
        config_lib.model_config(load_config(TINY, _hf_overrides(tiny_hf_dir)))
    config = load_config(TINY, _hf_overrides(tiny_hf_dir))
    config.unlock().model.dims = {}
    run = run_lib.resolve(config, str(tmp_path))
    with open(tiny_hf_dir / "config.json") as f:
        expected = config_from_hf(json.load(f))
    assert run.model_cfg == expected.replace(dtype="float32", remat="none")
    assert run.template == "abel"  # Qwen2.5-0.5B: SimpleRL-Zoo's Abel prompt, from the name
    params = loop._base_params(config, run.model_cfg, run.tokenizer, run.template,
                               str(tmp_path), run.mesh, run.rules)  # fmt: skip
    reference = nnx.split(from_hf(tiny_hf_dir))[1]
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        assert (ours == theirs).all()


def test_without_a_name_the_template_comes_from_the_architecture(tiny_hf_dir, tmp_path):
    unnamed = tmp_path / "checkpoint-final"
    unnamed.mkdir()
    for f in tiny_hf_dir.iterdir():
        (unnamed / f.name).symlink_to(f)
    config = load_config(TINY, _hf_overrides(unnamed))
    config.unlock().model.dims = {}
    model_cfg = config_lib.model_config(config)
    assert default_model_template("", str(unnamed), model_cfg) == "qwen_boxed"  # Qwen2ForCausalLM
    assert describe_run(config).template == "qwen_boxed"


def test_a_preset_that_disagrees_with_the_checkpoint_names_every_field(tmp_path):
    # Qwen2.5-Math-7B's config.json under the qwen2.5-7b preset: another RoPE base and context.
    path = tmp_path / "Qwen2.5-Math-7B"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config(get_preset("qwen2.5-math-7b"))))
    config = load_config(os.path.join(REPO, "configs", "qwen2_5_7b.py"), [f"model.hf_path={path}"])
    with pytest.raises(ValueError, match="model.preset='qwen2.5-7b' does not match") as err:
        config_lib.model_config(config)
    assert "rope_theta: 1000000.0 vs 10000.0" in str(err.value)
    assert "max_position: 131072 vs 4096" in str(err.value)
    matching = load_config(os.path.join(REPO, "configs", "qwen2_5_math_7b.py"),
                           [f"model.hf_path={path}"])  # fmt: skip
    assert config_lib.model_config(matching).rope_theta == 10_000.0


# ---------------------------------------------------------------------------------------------
# Reruns of a workdir


def _saved(config):
    return json.loads(config.to_json_best_effort())


def test_rerun_differences_sort_result_changes_from_harmless_ones():
    base = load_config(TINY)
    changed, harmless = config_lib.rerun_differences(
        _saved(base),
        _saved(
            load_config(
                TINY,
                [
                    "seed=1",
                    "rl.loss.kl_coef=0",
                    "log_every=5",
                    "mesh.data=1",
                    "total_steps=80",
                    "eval.limit=3",
                    "sampling.slots=32",
                    "sampling.prefill_prompts=2",
                ],
            )
        ),  # fmt: skip
    )
    assert changed == ["rl.loss.kl_coef: 0.0001 -> 0.0", "seed: 0 -> 1"]
    assert harmless == ["eval.limit: 0 -> 3", "log_every: 1 -> 5", "mesh.data: -1 -> 1",
                        "sampling.prefill_prompts: 1 -> 2",
                        f"sampling.slots: {base.sampling.slots} -> 32",
                        "total_steps: 40 -> 80"]  # fmt: skip
    # Under a decaying learning rate, total_steps reshapes the schedule of every step.
    cosine = load_config(TINY, ["optim.schedule=cosine"])
    longer = load_config(TINY, ["optim.schedule=cosine", "total_steps=80"])
    assert config_lib.rerun_differences(_saved(cosine), _saved(longer))[0] == [
        "total_steps: 40 -> 80"
    ]
    # A key a newer version added is not a change of the old run.
    old = _saved(base)
    del old["progress_bars"]
    assert config_lib.rerun_differences(old, _saved(base)) == ([], ["progress_bars: '<absent>' "
                                                                    "-> True"])  # fmt: skip


def test_a_rerun_keeps_the_saved_config_and_refuses_another_seed(tmp_path, caplog):
    path = tmp_path / "config.json"
    run_lib.save_config(load_config(TINY, ["seed=3"]), str(tmp_path), is_main=True)
    # Without checkpoints there is no run to resume: a new config replaces the old one.
    run_lib.save_config(load_config(TINY), str(tmp_path), is_main=True)
    first = path.read_text()
    assert json.loads(first)["seed"] == 0
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    run_lib.save_config(load_config(TINY), str(tmp_path), is_main=True)
    assert path.read_text() == first
    with pytest.raises(ValueError, match=r"seed: 0 -> 1.*Use a new --workdir"):
        run_lib.save_config(load_config(TINY, ["seed=1"]), str(tmp_path), is_main=True)
    assert path.read_text() == first
    with caplog.at_level(logging.WARNING):
        run_lib.save_config(load_config(TINY, ["log_every=2"]), str(tmp_path), is_main=True)
    assert "log_every: 1 -> 2" in caplog.text
    assert json.loads(path.read_text())["log_every"] == 2


def test_update_options_carry_the_rl_keys():
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
    opts = run_lib.update_options(load_config(TINY, ["mesh.data=1"]), mesh)
    assert (opts.adv_std_ddof, opts.estimator, opts.loss.kl_coef) == (1, "grpo", 1e-4)
    config = load_config(TINY, ["mesh.data=1", "rl.adv_std_ddof=0", "rl.loss.kl_coef=0",
                                "rl.kl_in_reward_coef=0.01", "rl.epochs=2"])  # fmt: skip
    opts = run_lib.update_options(config, mesh)
    assert (opts.adv_std_ddof, opts.kl_in_reward_coef, opts.epochs) == (0, 0.01, 2)
    assert opts.num_minibatches == 32 * 8 // 128


def test_kl_in_both_reward_and_loss_fails_before_any_set_up(tmp_path):
    config = load_config(TINY, ["mesh.data=1", "rl.kl_in_reward_coef=0.01"])  # kl_coef 1e-4
    with pytest.raises(ValueError, match="would both penalise the KL"):
        loop.train(config, str(tmp_path))
    assert not (tmp_path / "sft").exists()


def test_rewards_are_strict_and_evaluation_grades_leniently():
    config = load_config(TINY)
    assert config_lib.reward_config(config).extraction == "strict"
    assert config_lib.reward_config(config, evaluation=True).extraction == "lenient"
    strict = load_config(TINY, ["eval.extraction=strict"])
    assert config_lib.reward_config(strict, evaluation=True).extraction == "strict"
