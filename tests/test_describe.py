"""A run is described once: training writes its template, stops, model and tokenizer to
`run.json`, and evaluation, the notebooks and pass-rate filtering sample its checkpoints with
exactly those."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from zero_rl import config as config_lib
from zero_rl.config import load_config, load_run_config
from zero_rl.data.templates import stop_token_ids
from zero_rl.describe import (
    DESCRIPTION_FILE,
    describe_run,
    read_description,
    write_description,
)
from zero_rl.eval import describe_policy, load_policy
from zero_rl.models import get_preset, hf_config
from zero_rl.tools.notebook import restore_policy
from zero_rl.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
# Two RL steps of the tiny job on one device, from an HF checkpoint (no preset, no dims).
STEPS = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "sft.steps=0", "total_steps=2",
         "eval_every=0", "checkpoint_every=2", "async_checkpoint=False", "rl.num_prompts=8",
         "rl.num_samples=2", "rl.minibatch_size=16", "sampling.max_new_tokens=6",
         "sampling.max_prompt_len=64", "data.template=",
         f"tokenizer.path={config_lib.TINY_TOKENIZER}"]  # fmt: skip


@pytest.fixture(scope="module")
def hf_run(tiny_hf_dir, tmp_path_factory):
    """A run trained from a Qwen2.5-0.5B-named HF directory: SimpleRL-Zoo's template for the
    family is Abel's, where a model without a name would get the tiny model's plain one."""
    base = tiny_hf_dir
    config = load_config(TINY, STEPS + [f"model.hf_path={base}"])
    with config.unlocked():
        config.model.dims = {}  # the checkpoint defines the network
    workdir = str(tmp_path_factory.mktemp("run"))
    train(config, workdir)
    return config, workdir, base


def test_training_writes_what_it_resolved(hf_run):
    config, workdir, _ = hf_run
    trained = describe_run(config)
    assert trained.template == "abel"
    with open(os.path.join(workdir, DESCRIPTION_FILE)) as f:
        saved = json.load(f)
    assert saved["template"] == "abel"
    assert saved["stop_token_ids"] == list(trained.stop_token_ids)
    assert saved["model"]["embed_dim"] == 32 and saved["model"]["tie_embeddings"]
    assert read_description(workdir) == trained


def test_restore_and_evaluate_use_the_training_template_and_stops(hf_run, tmp_path):
    config, workdir, _ = hf_run
    trained = describe_run(config)
    policy = restore_policy(workdir)
    assert (policy.template, policy.stop_token_ids) == (trained.template, trained.stop_token_ids)
    assert policy.step == 2 and policy.meta["step"] == 2
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "eval.py"), f"--checkpoint={workdir}",
         f"--out_dir={out}", "--limit=2", "--batch_size=2", "--progress=false",
         "--notensorboard", "--config.sampling.eval_max_new_tokens=4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with template 'abel'" in result.stderr
    with open(out / "summary.json") as f:
        settings = json.load(f)["settings"]["synthetic_addition"]
    assert settings["template"] == "abel"
    assert settings["stop_token_ids"] == list(trained.stop_token_ids)


def test_a_run_outlives_its_base_model_directory(hf_run, tmp_path):
    """The model's structure is in run.json: the base HF directory may be gone."""
    config, workdir, base = hf_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["model"]["hf_path"] = str(tmp_path / "moved-away")
    (copy / "config.json").write_text(json.dumps(saved))
    policy = load_policy(load_run_config(str(copy)), checkpoint=str(copy))
    assert policy.description.model == describe_run(config).model
    assert policy.template == "abel"


def test_an_override_of_the_template_wins_and_the_stops_follow(hf_run):
    _, workdir, _ = hf_run
    config = load_run_config(workdir)
    config.data.template = "r1_zero"
    description = describe_policy(config, checkpoint=workdir)
    assert description.template == "r1_zero"
    assert description.stop_strings == ("</answer>",)
    assert description.stop_token_ids == tuple(stop_token_ids(description.tokenizer, "r1_zero"))


def test_a_workdir_without_run_json_is_described_from_its_config(tmp_path):
    config = load_config(TINY)
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    assert read_description(str(tmp_path)) == describe_run(config)
    write_description(describe_run(config), str(tmp_path))
    assert read_description(str(tmp_path)).template == "plain"


def test_a_broken_description_names_the_file(tmp_path):
    config = load_config(TINY)
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    (tmp_path / DESCRIPTION_FILE).write_text(json.dumps({"template": "plain"}))
    with pytest.raises(ValueError, match=f"{DESCRIPTION_FILE} is not a run description"):
        read_description(str(tmp_path))


def test_a_missing_tokenizer_is_named(tmp_path):
    config = load_config(TINY, [f"tokenizer.path={tmp_path / 'gone.model'}"])
    shutil.copy(config_lib.TINY_TOKENIZER, tmp_path / "gone.model")
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    write_description(describe_run(config), str(tmp_path))
    os.remove(tmp_path / "gone.model")
    with pytest.raises(FileNotFoundError, match="gone.model' is not there"):
        read_description(str(tmp_path))


def test_an_hf_model_is_described_by_its_own_config(tmp_path):
    path = tmp_path / "Mistral-7B-v0.1"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config(get_preset("mistral-7b"))))
    config = load_config(TINY)  # tiny dims: they do not describe this model, the directory does
    with config.unlocked():
        config.data.template = ""
    description = describe_run(config, hf_model=str(path), tokenizer=describe_run(config).tokenizer)
    assert description.model.embed_dim == get_preset("mistral-7b").embed_dim
    assert description.template == "abel"  # SimpleRL-Zoo's for Mistral-7B
