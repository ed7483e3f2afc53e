"""Notebook helpers: open a finished run, restore its policy from a checkpoint, sample from it,
and plot or compare runs.

Everything here reads what `zero_rl.train.loop.train(config, workdir)` writes: `config.json`
(read by `load_run_config`, as launch/eval.py reads it), TensorBoard events in `tb/`, orbax
checkpoints in `checkpoints/<step>/` and the SFT stage in `sft/`. The notebooks in
`notebooks/` are built on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from zero_rl import sharding
from zero_rl.data import apply_template, default_template
from zero_rl.data.templates import stop_token_ids
from zero_rl.eval.policy import (  # noqa: F401 - load_run_config is part of this module's API
    load_run_config,
    restore_params,
    run_model_config,
    tokenizer_path,
)
from zero_rl.sampling import finish_responses, generate, with_template_stops
from zero_rl.tokenizer import Tokenizer, load_tokenizer
from zero_rl.train.config import sampling_options

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_path(name: str) -> str:
    """The path of `configs/<name>.py` in a source checkout (configs are not in the package)."""
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        if not os.path.isdir(CONFIGS_DIR):
            raise FileNotFoundError(f"no configs directory at {CONFIGS_DIR}: not a source checkout")
        available = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py"))
        raise FileNotFoundError(f"no config {name!r} in {CONFIGS_DIR}; available: {available}")
    return path


def _checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"run {workdir!r} has no checkpoints directory")
    return ocp.CheckpointManager(directory, item_names=("state", "meta"))


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps saved in a run's `checkpoints/`, ascending."""
    manager = _checkpoint_manager(workdir)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


class Policy(NamedTuple):
    """A run's policy at one checkpoint, with what sampling needs to prompt it as training did."""

    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Tokenizer
    template: str  # prompt template name (zero_rl.data.templates)
    stop_token_ids: tuple[int, ...]
    step: int
    meta: dict  # the checkpoint's metadata: {"step", "data", "metrics"}
    config: ml_collections.ConfigDict


def restore_policy(
    workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None
) -> Policy:
    """The policy saved at `step` (default: the latest) of the run in `workdir`.

    Only the parameters are read, not the optimizer moments (twice their size), straight onto
    `mesh`, which defaults to FSDP over the local devices whatever mesh the run trained on.
    """
    config = load_run_config(workdir)
    tokenizer = load_tokenizer(tokenizer_path(config))
    template = config.data.template or default_template(config.model.preset or "tiny")
    model_cfg = run_model_config(config, tokenizer)
    step, graphdef, params = restore_params(
        workdir, model_cfg, step=step, mesh=sharding.make_mesh() if mesh is None else mesh
    )
    manager = _checkpoint_manager(workdir)
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    return Policy(
        graphdef=graphdef,
        params=params,
        tokenizer=tokenizer,
        template=template,
        stop_token_ids=tuple(stop_token_ids(tokenizer, template)),
        step=step,
        meta=dict(meta),
        config=config,
    )


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
    options = with_template_stops(sampling_options(policy.config), tokenizer, policy.template)
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
        stop_token_ids=tuple(dict.fromkeys(options.stop_token_ids + policy.stop_token_ids)),
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
