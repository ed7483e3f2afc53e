"""Notebook helpers: open a finished run, restore its policy from a checkpoint, sample from it,
and plot or compare runs.

Everything here reads what `zero_rl.train.loop.train(config, workdir)` writes: `config.json`
(read by `load_run_config`, as launch/eval.py reads it), `run.json` (the template, stops, model
and tokenizer: `zero_rl.describe`), TensorBoard events in `tb/`, orbax
checkpoints in `checkpoints/<step>/` and the SFT stage in `sft/`. The notebooks in
`notebooks/` are built on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from zero_rl import sharding
from zero_rl.config import load_run_config
from zero_rl.data import apply_template
from zero_rl.eval.policy import Policy, checkpoint_steps, load_policy
from zero_rl.sampling import finish_responses, generate

__all__ = [
    "Policy",
    "checkpoint_steps",
    "config_diff",
    "config_path",
    "load_run_config",
    "markdown_table",
    "plot_curves",
    "restore_policy",
    "sample",
]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(_REPO, "configs")


def config_path(name: str) -> str:
    """The path of `configs/<name>.py` in a source checkout (configs are not in the package)."""
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        if not os.path.isdir(CONFIGS_DIR):
            raise FileNotFoundError(f"no configs directory at {CONFIGS_DIR}: not a source checkout")
        available = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))
        raise FileNotFoundError(f"no config {name!r} in {CONFIGS_DIR}; available: {available}")
    return path


def restore_policy(
    workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None
) -> Policy:
    """The policy saved at `step` (default: the latest) of the run in `workdir`, with the
    template, stops and tokenizer training used (the run's `run.json`).

    Only the parameters are read, not the optimizer moments (twice their size), straight onto
    `mesh`, which defaults to FSDP over the local devices whatever mesh the run trained on.
    """
    return load_policy(
        load_run_config(workdir), checkpoint=workdir, step=step,
        mesh=sharding.make_mesh() if mesh is None else mesh,
    )  # fmt: skip


def sample(
    policy: Policy,
    questions: Sequence[str],
    *,
    num_samples: int = 1,
    temperature: float | None = None,
    max_new_tokens: int | Sequence[int] | None = None,
    rng: jax.Array | None = None,
) -> list[str]:
    """`num_samples` responses per question (samples of a question adjacent), as text.

    Questions are rendered with the run's template; `temperature` (0 = greedy) and
    `max_new_tokens` default to the run's sampling settings. `max_new_tokens` may be a list:
    one budget per question.
    """
    if isinstance(questions, str):
        raise TypeError("sample takes a list of questions, got a single str")
    tokenizer = policy.tokenizer
    options = policy.description.sampling_options(policy.config)
    budgets = None
    if isinstance(max_new_tokens, Sequence):
        if len(max_new_tokens) != len(questions):
            raise ValueError(f"max_new_tokens has {len(max_new_tokens)} budgets for "
                             f"{len(questions)} questions")  # fmt: skip
        budgets = [int(n) for n in max_new_tokens for _ in range(num_samples)]
        max_new_tokens = max(budgets)
    options = options.replace(
        max_new_tokens=max_new_tokens or options.max_new_tokens,
        temperature=options.temperature if temperature is None else temperature,
    )
    prompts = tokenizer.batch_encode(
        [apply_template(policy.template, q) for q in questions],
        add_bos=tokenizer.add_bos_default,
    )
    out = generate(
        (policy.graphdef, policy.params), prompts, options, num_samples=num_samples,
        rng=jax.random.key(0) if rng is None else rng, tokenizer=tokenizer,
        row_max_new_tokens=budgets,
    ).output  # fmt: skip
    tokens_bn, lengths_b, stopped_b = jax.device_get((out.tokens_bn, out.lengths_b, out.stopped_b))
    return finish_responses(tokenizer, tokens_bn, lengths_b, stopped_b, options.stop_strings).texts


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(
    config_a: ml_collections.ConfigDict, config_b: ml_collections.ConfigDict
) -> dict[str, tuple[Any, Any]]:
    """{"a.b.key": (value in a, value in b)} for every key whose value differs (a key missing
    from one side shows as None there)."""
    flat_a, flat_b = _flatten(config_a.to_dict()), _flatten(config_b.to_dict())
    return {
        key: (flat_a.get(key), flat_b.get(key))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key) != flat_b.get(key)
    }


def plot_curves(
    runs: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    tags: Sequence[str],
    *,
    ncols: int = 2,
    width: float = 5.0,
    height: float = 3.0,
):
    """One panel per tag, one line per run, against step; returns the matplotlib Figure.

    Args:
      runs: {run name: scalars}, scalars as `zero_rl.train.metrics.read_scalars` returns them
        ({tag: [(step, value), ...]}).
      tags: the scalars to plot; each must be logged by at least one run.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting is optional for the package

    if not runs or not tags:
        raise ValueError("plot_curves needs at least one run and one tag")
    for tag in tags:
        if not any(tag in scalars for scalars in runs.values()):
            logged = sorted(set().union(*(scalars.keys() for scalars in runs.values())))
            raise ValueError(f"no run logged {tag!r}; logged tags: {logged}")
    nrows = -(-len(tags) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained"
    )
    for ax, tag in zip(axes.flat, tags):
        for name, scalars in runs.items():
            if tag in scalars:
                steps, values = zip(*scalars[tag])
                ax.plot(steps, values, marker=".", label=name)
        ax.set_title(tag)
        ax.set_xlabel("step")
        if len(runs) > 1:
            ax.legend()
    for ax in axes.flat[len(tags) :]:
        ax.set_visible(False)
    return fig


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
    """A Markdown table (an `IPython.display.Markdown`, rendered by Jupyter) of `rows`.

    Cells are shown verbatim as code spans, so LaTeX answers read as written; floats get four
    significant digits and None shows as a dash. `columns` defaults to the first row's keys.
    """
    from IPython.display import Markdown  # noqa: PLC0415 - only notebooks render tables

    if not rows:
        raise ValueError("markdown_table needs at least one row")
    columns = list(rows[0]) if columns is None else list(columns)

    def cell(value) -> str:
        if value is None:
            return "-"
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        text = text.replace("\n", " ↵ ").replace("|", "\\|")
        return f"`{text}`" if text else ""

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return Markdown("\n".join(lines))
