"""Loading a policy from a trainer checkpoint (with the run's saved config) or an HF model
directory, and launch/eval.py end to end in a subprocess."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from zero_rl import config as config_lib
from zero_rl import sharding
from zero_rl.checkpoint import Checkpointer
from zero_rl.config import TINY_VOCAB_SIZE, load_run_config, tokenizer_path
from zero_rl.eval import load_policy, restore_params
from zero_rl.eval.policy import (
    params_fingerprint,
    policy_config_conflicts,
    saved_run_directory,
)
from zero_rl.models import create_model
from zero_rl.optim import make_optimizer
from zero_rl.sampling import with_template_stops
from zero_rl.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.py")
TINY_TOKENIZER = os.path.join(REPO, "zero_rl", "assets", "tiny_addition.model")


@pytest.fixture(scope="module")
def config():
    """The run's config: the tiny one with a command-line change configs/tiny.py lacks."""
    return config_lib.load_config(TINY_CONFIG, ["model.dims.mlp_dim=96"])


@pytest.fixture(scope="module")
def model_cfg(config):
    return config_lib.model_config(config, load_tokenizer(TINY_TOKENIZER).vocab_size)


def _save_run(workdir, config, params_by_step):
    """What the trainer leaves in a workdir: config.json and checkpoints with Adam state."""
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    tx, _ = make_optimizer(config.optim, 10)
    ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
    for step, params in params_by_step.items():
        ckpt.save(step, {"params": params, "opt_state": tx.init(params)}, {"step": step})
    ckpt.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, config, model_cfg):
    """A run directory as the trainer leaves it: steps 5 and 10 with params and Adam state."""
    workdir = tmp_path_factory.mktemp("run")
    params_by_step = {
        step: nnx.split(create_model(model_cfg, seed=seed))[1] for step, seed in ((5, 1), (10, 2))
    }
    _save_run(workdir, config, params_by_step)
    return workdir, params_by_step


def _assert_same(params, reference):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_restore_params_latest_or_chosen_step(workdir, model_cfg):
    path, params_by_step = workdir
    step, _, params = restore_params(str(path), model_cfg)
    assert step == 10
    _assert_same(params, params_by_step[10])
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    step, graphdef, params = restore_params(str(path / "checkpoints"), model_cfg, step=5, mesh=mesh)
    _assert_same(params, params_by_step[5])
    embed = params["embed"].get_value()
    assert embed.sharding.mesh.shape == mesh.shape and not embed.sharding.is_fully_replicated
    assert nnx.merge(graphdef, params).cfg == model_cfg


def test_restore_params_errors(workdir, model_cfg, tmp_path):
    path, _ = workdir
    with pytest.raises(ValueError, match=r"no checkpoint for step 7 .* saved steps: \[5, 10\]"):
        restore_params(str(path), model_cfg, step=7)
    with pytest.raises(ValueError, match="has shape .* is this the run's config"):
        restore_params(str(path), model_cfg.replace(mlp_dim=128))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_params(str(tmp_path / "nowhere"), model_cfg)
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        restore_params(str(tmp_path), model_cfg)


def test_load_policy_needs_exactly_one_source(config, workdir):
    policy = load_policy(config, checkpoint=str(workdir[0]))
    assert policy.step == 10 and policy.tokenizer.vocab_size == 48 == TINY_VOCAB_SIZE
    assert policy.fingerprint == params_fingerprint(workdir[1][10])
    assert policy.fingerprint != params_fingerprint(workdir[1][5])
    with pytest.raises(ValueError, match="exactly one"):
        load_policy(config)
    with pytest.raises(ValueError, match="exactly one"):
        load_policy(config, checkpoint=str(workdir[0]), hf_model=str(workdir[0]))
    with pytest.raises(FileNotFoundError, match="HF model directory"):
        load_policy(config, hf_model="/nonexistent/model")


def test_the_saved_run_config_is_found_and_read(config, workdir, tmp_path):
    path = workdir[0]
    assert saved_run_directory(str(path)) == str(path)
    assert saved_run_directory(str(path / "checkpoints")) == str(path)
    assert saved_run_directory(str(tmp_path)) is None
    saved = load_run_config(str(path))
    assert saved.model.dims.mlp_dim == 96 and config_lib.model_config(saved, 48).mlp_dim == 96
    assert policy_config_conflicts(saved, config) == []
    tiny = config_lib.load_config(TINY_CONFIG)
    assert policy_config_conflicts(saved, tiny) == [
        f"model.dims: {saved.model.dims.to_dict()!r} vs {tiny.model.dims.to_dict()!r}"
    ]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 9}))
    with pytest.raises(ValueError, match="not a trainer run's config .*use --hf_model"):
        load_run_config(str(tmp_path))


def test_tokenizer_of_a_run(tmp_path):
    tiny = config_lib.load_config(TINY_CONFIG)
    assert os.path.samefile(
        tokenizer_path(tiny), os.path.join(REPO, "zero_rl", "assets", "tiny_addition.model")
    )
    assert load_tokenizer(tokenizer_path(tiny)).vocab_size == TINY_VOCAB_SIZE
    assert tokenizer_path(tiny, hf_model="/hf") == "/hf"
    with_path = config_lib.load_config(TINY_CONFIG, ["model.hf_path=/run/base"])
    assert tokenizer_path(with_path) == "/run/base"
    assert tokenizer_path(with_path, hf_model="/hf") == "/hf"
    explicit = config_lib.load_config(TINY_CONFIG, ["tokenizer.path=/tok.model"])
    assert tokenizer_path(explicit, hf_model="/hf") == "/tok.model"
    # A 7B preset never falls back to the 48-token addition vocabulary.
    preset = config_lib.load_config(os.path.join(REPO, "configs", "qwen2_5_7b.py"))
    assert not preset.model.hf_path and not preset.tokenizer.path
    with pytest.raises(ValueError, match="no tokenizer for model.preset='qwen2.5-7b'"):
        tokenizer_path(preset)
    big = config_lib.load_config(TINY_CONFIG)
    with big.unlocked():
        big.model.dims.vocab_size = 32000
    with pytest.raises(ValueError, match="vocab_size=32000.*tiny tokenizer has 48"):
        tokenizer_path(big)


def _cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "eval.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_cli_evaluates_a_checkpoint_with_its_saved_config(workdir, tmp_path):
    out = tmp_path / "out"
    # No --config: configs/tiny.py's mlp_dim (192) would not fit this run's checkpoint.
    result = _cli(f"--checkpoint={workdir[0]}", f"--out_dir={out}", "--limit=8",
                  "--batch_size=8", "--config.sampling.eval_max_new_tokens=8",
                  "--progress=false")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synthetic_addition" in result.stdout and "step 10" in result.stderr
    assert f"config from {workdir[0] / 'config.json'}" in result.stderr
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["step"] == 10
    settings = summary["settings"]["synthetic_addition"]
    assert settings["template"] == "plain" and settings["step"] == 10
    assert settings["policy"] == params_fingerprint(workdir[1][10])
    assert summary["benchmarks"]["synthetic_addition"]["num_problems"] == 8
    records = _read_jsonl(out / "synthetic_addition" / "generations.jsonl")
    assert len(records) == 8 and all(r["length"] <= 8 for r in records)
    assert os.listdir(out / "tb")


def test_cli_refuses_a_config_that_disagrees_with_the_saved_one(workdir, tmp_path):
    result = _cli(f"--config={TINY_CONFIG}", f"--checkpoint={workdir[0]}",
                  f"--out_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: --config disagrees with the run's {workdir[0]}/config.json on model.dims" in (
        result.stderr
    )
    assert "drop --config" in result.stderr and not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.eval.num_samples=4"], "temperature 0 is greedy decoding: all 4 samples"),
        (
            ["--config.eval.num_samples=2", "--config.eval.temperature=1.0", "--ks=1,4"],
            r"ks=[1, 4] must lie in [1, ",
        ),
        (["--config.sampling.max_prompt_len=4"], "tokens, more than max_prompt_len=4"),
        # The sampling flags of earlier versions name the config key that replaced them.
        (["--temperature=1.0"], "--temperature is a config key now: use --config.eval.temperature"),
        (["--max_new_tokens", "8"], "use --config.sampling.eval_max_new_tokens=..."),
    ],
)
def test_cli_rejects_bad_sampling_flags_before_loading(workdir, tmp_path, flags, message):
    # The checkpoint directory is empty: any attempt to load the model would fail otherwise.
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    (bare / "config.json").write_text((workdir[0] / "config.json").read_text())
    result = _cli(f"--checkpoint={bare}", f"--out_dir={tmp_path / 'out'}", *flags)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_an_unknown_benchmark_before_loading(workdir, tmp_path):
    result = _cli(f"--checkpoint={workdir[0]}", f"--out_dir={tmp_path}", "--benchmarks=gsm9k")
    assert result.returncode == 2
    assert "error: unknown benchmark 'gsm9k'; valid names:" in result.stderr
    assert "math500" in result.stderr and not os.listdir(tmp_path)


def test_cli_grade_only(tmp_path):
    path = tmp_path / "vllm.jsonl"
    # No benchmark field: --benchmark names it, and gsm8k's "#### N" golds are read as such.
    rows = [
        {"prompt": "Q1", "response": "\\boxed{4}", "answer": "2 + 2\n#### 4",
         "finish_reason": "stop"},
        {"prompt": "Q1", "response": "\\boxed{5}", "answer": "2 + 2\n#### 4",
         "finish_reason": "length"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _cli("--grade_only", f"--input={path}", f"--out_dir={tmp_path / 'out'}",
                  "--benchmark=gsm8k", "--progress=false", "--notensorboard")  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "summary.json") as f:
        summary = json.load(f)
    gsm8k = summary["benchmarks"]["gsm8k"]
    assert gsm8k["accuracy"] == 0.5 and gsm8k["pass@2"] == 1.0 and gsm8k["truncated_ratio"] == 0.5
    assert summary["settings"]["gsm8k"]["graded_from"] == str(path)
    assert [r["gold"] for r in _read_jsonl(tmp_path / "out" / "gsm8k" / "generations.jsonl")] == [
        "4",
        "4",
    ]
    assert not os.path.exists(tmp_path / "out" / "tb")
    assert summary["settings"]["gsm8k"]["grading"]["extraction"] == "lenient"
    # An unmarked answer counts when grading (lenient, the default), not under the reward's
    # strict rule, chosen with --config.eval.extraction.
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({**rows[0], "response": "2 + 2 = 4.\nAnswer: 4"}) + "\n")
    for extraction, accuracy in (("lenient", 1.0), ("strict", 0.0)):
        out = tmp_path / f"bare_{extraction}"
        result = _cli("--grade_only", f"--input={bare}", f"--out_dir={out}", "--benchmark=gsm8k",
                      "--progress=false", "--notensorboard",
                      f"--config.eval.extraction={extraction}")  # fmt: skip
        assert result.returncode == 0, result.stderr
        with open(out / "summary.json") as f:
            assert json.load(f)["benchmarks"]["gsm8k"]["accuracy"] == accuracy, extraction
    # Grading another file into the same benchmark directory is refused, without a traceback.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(rows[0]) + "\n")
    result = _cli("--grade_only", f"--input={other}", f"--out_dir={tmp_path / 'out'}",
                  "--benchmark=gsm8k", "--progress=false", "--notensorboard")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "holds generations made with other settings" in (
        result.stderr
    )


# An HF model directory: a tiny Qwen2 saved by transformers, with a tokenizer.json built here.


def _hf_tokenizer(path):
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [f"What is {a} + {b}?\n{a + b}" for a in range(10, 100, 7) for b in range(10, 100, 9)]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    )
    return tok.get_vocab_size()


def _save_hf_model(path, vocab_size, seed):
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    with torch.no_grad():  # HF's init leaves norms at 1 and biases at 0: make them count
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.2)
    model.save_pretrained(str(path), safe_serialization=True)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Two HF model directories with the same tokenizer and other weights."""
    dirs = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"hf{seed}")
        vocab_size = _hf_tokenizer(path)
        _save_hf_model(path, vocab_size, seed)
        dirs.append(path)
    return dirs


HF_FLAGS = ("--limit=4", "--batch_size=4", "--config.sampling.eval_max_new_tokens=6",
            "--config.sampling.max_prompt_len=32", "--progress=false", "--notensorboard",
            "--config.mesh.data=1")  # fmt: skip


def test_load_policy_from_an_hf_directory_equals_from_hf(hf_dirs):
    from zero_rl.models import from_hf

    config = config_lib.load_config(TINY_CONFIG)
    policy = load_policy(config, hf_model=str(hf_dirs[0]))
    reference = nnx.split(from_hf(str(hf_dirs[0]), dtype="float32", param_dtype="float32"))[1]
    _assert_same(policy.params, reference)
    assert policy.step == 0 and policy.source == f"HF model {hf_dirs[0]}"
    assert policy.tokenizer.vocab_size == load_tokenizer(str(hf_dirs[0])).vocab_size != 48
    assert policy.fingerprint == params_fingerprint(reference)
    other = load_policy(config, hf_model=str(hf_dirs[1]))
    assert other.step == 0 and other.fingerprint != policy.fingerprint
    with pytest.raises(ValueError, match="a step applies to a trainer checkpoint"):
        load_policy(config, hf_model=str(hf_dirs[0]), step=3)


@pytest.fixture(scope="module")
def hf_eval(hf_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_eval")
    result = _cli(f"--hf_model={hf_dirs[0]}", f"--out_dir={out}", *HF_FLAGS)
    assert result.returncode == 0, result.stderr
    return out, result


def test_cli_evaluates_an_hf_model_as_from_hf_does(hf_dirs, hf_eval):
    from zero_rl.eval.sets import SYNTHETIC, load_eval_sets
    from zero_rl.models import from_hf
    from zero_rl.train.evaluate import evaluate

    out, result = hf_eval
    assert f"HF model {hf_dirs[0]}" in result.stderr
    records = _read_jsonl(out / "synthetic_addition" / "generations.jsonl")
    # The same problems, prompts, tokenizer and greedy decoding through from_hf's model.
    (eval_set,) = load_eval_sets([SYNTHETIC], limit=4, synthetic_seed=0, synthetic_size=200)
    assert [r["id"] for r in records] == [ex.id for ex in eval_set.examples]
    tokenizer = load_tokenizer(str(hf_dirs[0]))
    graphdef, params = nnx.split(from_hf(str(hf_dirs[0]), dtype="float32", param_dtype="float32"))
    config = config_lib.load_config(TINY_CONFIG)
    # The CLI's options: the config's evaluation sampling with the flags' greedy decoding and
    # lengths, and the template's stops.
    options = config_lib.sampling_options(config, evaluation=True).replace(
        temperature=0.0, max_new_tokens=6, max_prompt_len=32
    )
    reference = evaluate(
        graphdef,
        params,
        eval_set.examples,
        tokenizer=tokenizer,
        template="plain",
        sampling=with_template_stops(options, tokenizer, "plain"),
        batch_size=4,
        reward=config_lib.reward_config(config, evaluation=True),  # graded as the CLI grades
    )
    assert [r["response"] for r in records] == reference.texts
    assert [r["length"] for r in records] == reference.lengths.tolist()
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["benchmarks"]["synthetic_addition"]["accuracy"] == reference.accuracy
    assert summary["settings"]["synthetic_addition"]["policy"] == params_fingerprint(params)


def test_cli_refuses_another_hf_model_in_the_same_out_dir(hf_dirs, hf_eval):
    out, _ = hf_eval
    before = (out / "synthetic_addition" / "generations.jsonl").read_text()
    result = _cli(f"--hf_model={hf_dirs[1]}", f"--out_dir={out}", *HF_FLAGS)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds generations made with other settings (policy: " in result.stderr
    assert (out / "synthetic_addition" / "generations.jsonl").read_text() == before


def test_cli_checkpoint_of_a_run_started_from_an_hf_model(hf_dirs, hf_eval, tmp_path):
    """The trainer's model.hf_path came from its command line: only config.json knows it, and
    with it the tokenizer (the tiny one would not even fit the vocabulary)."""
    from zero_rl.models import from_hf

    config = config_lib.load_config(TINY_CONFIG, [f"model.hf_path={hf_dirs[0]}"])
    with config.unlocked():
        config.model.dims = {}  # the architecture is the HF model's
    params = nnx.split(from_hf(str(hf_dirs[0]), dtype="float32", param_dtype="float32"))[1]
    (tmp_path / "run").mkdir()
    _save_run(tmp_path / "run", config, {3: params})
    result = _cli(f"--checkpoint={tmp_path / 'run'}", f"--out_dir={tmp_path / 'out'}", *HF_FLAGS)
    assert result.returncode == 0, result.stderr
    records = _read_jsonl(tmp_path / "out" / "synthetic_addition" / "generations.jsonl")
    # The same parameters and tokenizer as the HF model itself: the same responses.
    from_model = _read_jsonl(hf_eval[0] / "synthetic_addition" / "generations.jsonl")
    assert [r["response"] for r in records] == [r["response"] for r in from_model]
    with open(tmp_path / "out" / "summary.json") as f:
        assert json.load(f)["settings"]["synthetic_addition"]["step"] == 3
