"""The notebooks run top to bottom in a fresh kernel, show what they claim, and are stored without
outputs; the helpers they share (zero_rl.tools.notebook) are checked on the quickstart's run.

Each executed notebook gets one extra cell, appended here and not stored, that checks the
notebook's own variables against independent references (integer arithmetic, hand-judged
answer pairs, the logged metrics).
"""

import json
import os

import jax
import matplotlib
import nbformat
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from nbclient import NotebookClient

from zero_rl.config import load_config, reward_config, sampling_options
from zero_rl.sampling import template_stops
from zero_rl.tools import notebook
from zero_rl.train.evaluate import evaluate
from zero_rl.train.loop import load_examples

matplotlib.use("Agg")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ["quickstart", "verifier_playground", "inspect_run"]


def _execute(name: str, cwd, checks: str, **env_vars: str) -> nbformat.NotebookNode:
    """Runs notebook `name` plus a `checks` cell in a new kernel; raises on any cell's error."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(checks))
    env = dict(os.environ)
    # A laptop's view: one CPU device, not this suite's 8 fake ones; no display for plots.
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", MPLBACKEND="Agg", **env_vars)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


QUICKSTART_CHECKS = """
import numpy as np

assert [s for s, _ in scalars["train/reward_mean"]] == list(range(1, 9))
eval_accuracy = dict(scalars["eval/accuracy"])
assert sorted(eval_accuracy) == [0, 4, 8], eval_accuracy
assert eval_accuracy[8] > eval_accuracy[0], eval_accuracy  # the claim of the first cell
# The figure shows exactly the logged values.
tags = ["train/reward_mean", "train/accuracy", "train/response_length_mean", "eval/accuracy"]
for ax, tag in zip(fig.axes, tags):
    assert ax.get_title() == tag
    steps, values = ax.lines[0].get_data()
    assert list(steps) == [s for s, _ in scalars[tag]]
    np.testing.assert_allclose(values, [v for _, v in scalars[tag]])
# Every verdict agrees with integer arithmetic on the problem's operands.
assert policy.step == 8 and len(responses) == 12
for i, (response, verdict) in enumerate(zip(responses, verdicts)):
    meta = examples[i // NUM_SAMPLES].meta
    answer = verdict.extracted
    expected = answer is not None and answer.isdigit() and int(answer) == meta["a"] + meta["b"]
    assert verdict.correct == expected, (response, verdict)
    assert verdict.reward == float(expected)
"""


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart") / "run"
    _execute(
        "quickstart",
        tmp_path_factory.mktemp("cwd"),
        QUICKSTART_CHECKS,
        ZERO_RL_QUICKSTART_WORKDIR=str(workdir),
    )
    return str(workdir)


@pytest.mark.slow
def test_quickstart_trains_plots_and_grades_samples(quickstart_run):
    with open(os.path.join(quickstart_run, "final_metrics.json")) as f:
        assert "eval/accuracy" in json.load(f)


# (response, gold) -> (equal, stage that decided), judged by hand.
PLAYGROUND_EXPECTED = {
    0: (True, "normaliser"),  # 1/2 = 0.5
    1: (True, "normaliser"),  # \dfrac12
    2: (True, "normaliser"),  # 0.3333 ~ 1/3 within 1e-4
    3: (False, "normaliser"),  # 0.33
    4: (True, "normaliser"),  # 1/2
    5: (True, "normaliser"),  # sets
    6: (False, "normaliser"),  # (1, 2) vs (2, 1)
    7: (True, "normaliser"),  # \left[ \right)
    8: (False, "normaliser"),  # [2,5] vs [2,5)
    9: (True, "normaliser"),  # union in another order
    10: (True, "normaliser"),  # 12 cm
    11: (True, "normaliser"),  # 90 degrees
    12: (True, "normaliser"),  # 25% = 0.25
    13: (True, "normaliser"),  # 25 for 25%
    14: (True, "normaliser"),  # x = 5
    15: (True, "normaliser"),  # 1,234
    16: (True, "normaliser"),  # 3/4 = 0.75
    17: (True, "normaliser"),  # {3, 5}
    18: (False, "normaliser"),  # hedge
    19: (True, "normaliser"),  # (B)
    20: (False, "extraction"),  # no final answer
    21: (True, "math-verify"),  # 2 sqrt 2 = sqrt 8
    22: (True, "math-verify"),  # sqrt3/3 = 1/sqrt3
    23: (True, "math-verify"),  # (x+1)^2
    24: (True, "math-verify"),  # y = 2x + 1
    25: (False, "math-verify"),  # 11 sqrt 34 != 34 sqrt 11
    26: (False, "math-verify"),  # pi is not 3.1416
}

PLAYGROUND_CHECKS = f"""
expected = {PLAYGROUND_EXPECTED!r}
assert len(rows) == len(expected)
for i, row in enumerate(rows):
    assert (row["equal"], row["decided by"]) == expected[i], (i, row)
assert [r.timed_out for r in results] == [True, False, True, False], results
assert [r.correct for r in results] == [False, True, False, True], results
assert timeouts == 2
# format_aware: correct boxed, correct unboxed, wrong boxed, no answer.
assert [v.reward for v in by_mode["format_aware"]] == [1.0, 0.5, -0.5, -1.0]
assert [v.reward for v in by_mode["correctness"]] == [1.0, 1.0, 0.0, 0.0]
"""


@pytest.mark.slow
def test_verifier_playground_judges_pairs_as_expected(tmp_path):
    _execute("verifier_playground", tmp_path, PLAYGROUND_CHECKS)


INSPECT_CHECKS = """
assert (first.step, last.step, last_b.step) == (4, 8, 8)
assert config_diff(config_a, config_b) == {"optim.lr": (5e-4, 1e-4)}
# Run B started from run A's SFT model: the same step-0 accuracy, and no SFT steps of its own.
assert runs["A"]["eval/accuracy"][0] == runs["B"]["eval/accuracy"][0]
assert all(abs(lr - 1e-4) < 1e-10 for _, lr in runs["B"]["train/learning_rate"])
# The restored checkpoint reproduces the accuracy logged at its step (float32 in TensorBoard).
assert abs(result.accuracy - logged) < 1e-6, (result.accuracy, logged)
# The sampled-verdict table: the first 8 held-out problems whose ones digits carry, each
# policy's greedy answer judged by integer arithmetic, shown cell for cell.
def total(ex):
    return ex.meta["a"] + ex.meta["b"]


carry = [ex for ex in held_out if total(ex) % 10 != ex.meta["a"] % 10 + ex.meta["b"] % 10]
assert [ex.id for ex in examples] == [ex.id for ex in carry[:8]] and len(examples) == 8
assert list(verdicts) == [f"A step {first.step}", f"A step {last.step}", f"B step {last_b.step}"]
lines = table.data.splitlines()
assert lines[0] == "| question | gold | " + " | ".join(verdicts) + " |", lines[0]
assert len(lines) == 2 + len(examples)
for ex, line in zip(examples, lines[2:]):
    cells = [c.strip().strip("`") for c in line.strip("|").split(" | ")]
    assert cells[:2] == [ex.prompt.strip(), str(total(ex))], cells
    for cell, (name, v) in zip(cells[2:], verdicts.items()):
        answer = v[examples.index(ex)].extracted
        right = answer is not None and answer.isdigit() and int(answer) == total(ex)
        assert cell == f"{answer} {'✓' if right else '✗'}", (name, cell, answer)
# The verdicts are of the responses sample() gives again (greedy decoding is deterministic).
again = sample(last, questions, temperature=0.0)
assert [x.extracted for x in score(again, golds, config=reward_config(config_a))] == [
    x.extracted for x in verdicts[f"A step {last.step}"]
]
"""


@pytest.mark.slow
def test_inspect_run_compares_runs_and_restores_checkpoints(quickstart_run, tmp_path):
    run_b = tmp_path / "run_b"
    _execute(
        "inspect_run",
        tmp_path,
        INSPECT_CHECKS,
        ZERO_RL_RUN_A=quickstart_run,
        ZERO_RL_RUN_B=str(run_b),
    )
    sft_steps = [int(s) for s in os.listdir(run_b / "sft" / "sft_checkpoints") if s.isdigit()]
    assert sft_steps == [300]


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


# The helpers, in this process (8 fake devices, so restored params are sharded over them).


def test_restore_policy_reads_the_saved_params(quickstart_run):
    policy = notebook.restore_policy(quickstart_run, step=4)
    assert policy.step == 4 and policy.meta["step"] == 4
    # Independent read: orbax's plain restore of the whole state as NumPy arrays.
    state_dir = os.path.join(quickstart_run, "checkpoints", "4", "state")
    metadata = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    saved = ocp.PyTreeCheckpointer().restore(state_dir, restore_args=as_numpy)["params"]
    saved = {
        tuple(k.key for k in path if k.key != "value"): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    restored = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(policy.params)}
    assert restored.keys() == saved.keys()
    for key, value in restored.items():
        np.testing.assert_array_equal(np.asarray(value), saved[key], err_msg=str(key))


def test_greedy_sample_matches_the_trainers_evaluation(quickstart_run):
    policy = notebook.restore_policy(quickstart_run)
    config = policy.config
    _, held_out = load_examples(config)
    examples = held_out[:6]
    texts = notebook.sample(policy, [ex.prompt for ex in examples], temperature=0.0)
    # The trainer's evaluation options (the template's stops), greedy, at sample()'s length.
    stop_ids, stop_strings = template_stops(policy.tokenizer, policy.template)
    assert stop_ids == policy.stop_token_ids
    options = sampling_options(
        config, evaluation=True, stop_token_ids=stop_ids, stop_strings=stop_strings
    ).replace(temperature=0.0, max_new_tokens=config.sampling.max_new_tokens)
    result = evaluate(
        policy.graphdef, policy.params, examples, tokenizer=policy.tokenizer,
        template=policy.template, sampling=options, batch_size=len(examples),
        reward=reward_config(config, evaluation=True),
    )  # fmt: skip
    assert texts == result.texts


def test_restore_policy_errors_name_the_problem(quickstart_run, tmp_path):
    with pytest.raises(ValueError, match=r"no checkpoint for step 5 .*saved steps: \[4, 8\]"):
        notebook.restore_policy(quickstart_run, step=5)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        notebook.restore_policy(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(FileNotFoundError, match="has no checkpoints directory"):
        notebook.checkpoint_steps(str(tmp_path))


def test_config_path_and_run_config_round_trip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"available: \[.*'tiny'"):
        notebook.config_path("tinyy")
    config = load_config(notebook.config_path("tiny"), ["optim.lr=0.25"])
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    loaded = notebook.load_run_config(str(tmp_path))
    assert notebook.config_diff(config, loaded) == {}
    loaded.rl.num_samples = 4
    assert notebook.config_diff(config, loaded) == {"rl.num_samples": (8, 4)}


def test_config_diff_reports_changed_added_and_removed_keys():
    import ml_collections

    a = ml_collections.ConfigDict({"x": 1, "sub": {"y": 2.0, "z": "s"}, "gone": True})
    b = ml_collections.ConfigDict({"x": 1, "sub": {"y": 3.0, "z": "s", "new": 5}})
    assert notebook.config_diff(a, b) == {
        "gone": (True, None),
        "sub.new": (None, 5),
        "sub.y": (2.0, 3.0),
    }


def test_plot_curves_draws_one_line_per_run_and_tag():
    runs = {
        "a": {"r": [(1, 0.1), (2, 0.5)], "len": [(1, 20.0), (2, 22.0)]},
        "b": {"r": [(1, 0.2), (3, 0.4)]},
    }
    fig = notebook.plot_curves(runs, ["r", "len"], ncols=1)
    r_ax, len_ax = fig.axes
    assert r_ax.get_title() == "r" and len_ax.get_title() == "len"
    assert [line.get_label() for line in r_ax.lines] == ["a", "b"]
    np.testing.assert_array_equal(r_ax.lines[1].get_xydata(), [[1, 0.2], [3, 0.4]])
    assert [line.get_label() for line in len_ax.lines] == ["a"]  # "b" did not log it
    with pytest.raises(ValueError, match=r"no run logged 'loss'; logged tags: \['len', 'r'\]"):
        notebook.plot_curves(runs, ["loss"])


def test_markdown_table_escapes_pipes_and_shows_none():
    rows = [{"a": "|x|", "b": None}, {"a": 1, "b": "p\nq"}, {"a": 0.30078125, "b": 2.0}]
    assert notebook.markdown_table(rows).data.splitlines() == [
        "| a | b |",
        "| --- | --- |",
        "| `\\|x\\|` | - |",
        "| `1` | `p ↵ q` |",
        "| `0.3008` | `2` |",
    ]
    with pytest.raises(ValueError, match="at least one row"):
        notebook.markdown_table([])
