"""Checkpoints with orbax: asynchronous saves, last-N plus best-by-eval, safe resume.

orbax writes each step to a temporary directory and renames it when complete, so a save cut
short by a crash never looks like a checkpoint; a checkpoint that is complete but unreadable
(disk corruption) makes `restore_latest` fall back to the previous one with a warning and move
the unreadable one to `<directory>/corrupt/`, out of the way of later saves of that step and
of keep-last-N, but never deleted. Old steps are deleted only after a newer save has finished.
A `gs://` directory goes to orbax as it is; a local one is made absolute.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

log = logging.getLogger(__name__)

BEST_METRIC = "eval/accuracy"
CORRUPT_DIR = "corrupt"  # not a step name, so orbax never lists what is moved there

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def checkpoint_path(directory: str) -> str:
    """The directory as orbax gets it: a URL (`gs://bucket/run/checkpoints`) verbatim, since
    `os.path.abspath` would turn it into a local path; a local path made absolute."""
    if _URL.match(directory):
        return directory
    return os.path.abspath(directory)


def any_process(flag: bool, allgather: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
    """True on every process if `flag` is True on any of them.

    For decisions every process must take at the same point, such as saving (a collective) and
    stopping after a SIGTERM that reached only some hosts. One process needs no communication;
    several exchange one int each (`allgather`, by default `process_allgather`).
    """
    if jax.process_count() == 1:
        return bool(flag)
    gather = allgather or multihost_utils.process_allgather
    return bool(np.any(gather(np.asarray(flag, np.int32))))


class Checkpointer:
    """Saves and restores `{"state": pytree of arrays, "meta": JSON dict}` per step."""

    def __init__(
        self, directory: str, *, keep: int = 3, keep_best: bool = True, async_save: bool = True
    ):
        self.directory = checkpoint_path(directory)
        is_local = not _URL.match(self.directory)  # a bucket is orbax's to create and check
        if is_local and os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} exists and is a file")
        policies: list[pp.PreservationPolicy] = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(
                pp.BestN(
                    get_metric_fn=lambda m: m.get(BEST_METRIC, float("-inf")),
                    reverse=False,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self, step: int, state: Any, meta: dict, *, metrics: dict | None = None, force: bool = False
    ) -> bool:
        """Starts an (async) save; returns False if this step is already saved."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest readable checkpoint as (step, state, meta), or None if there is none.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings, so arrays are
        restored directly onto the mesh. A step that any process cannot read counts as
        unreadable on all (they must resume from the same step). Unreadable steps newer than
        the one restored are moved to `<directory>/corrupt/<step>-<time>`; if no step is
        readable, nothing is moved.
        """
        unreadable = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
                failed = False
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
                    step,
                    self.directory,
                    type(err).__name__,
                    err,
                )
                failed = True
            if any_process(failed):
                unreadable.append(step)
                continue
            self._set_aside(unreadable)
            return step, state, meta
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves the given step directories to `corrupt/`: left in place, a retrained step could
        not be saved again (orbax refuses an existing step) and would count toward keep-last-N."""
        if not steps:
            return
        if jax.process_index() == 0:
            root = epath.Path(self.directory)
            (root / CORRUPT_DIR).mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                target = root / CORRUPT_DIR / f"{step}-{stamp}"
                n = 1
                while target.exists():
                    target, n = root / CORRUPT_DIR / f"{step}-{stamp}-{n}", n + 1
                (root / str(step)).rename(target)
                log.warning("moved the unreadable checkpoint of step %d to %s", step, target)
        # Every process sees the moves before any of them lists steps or saves again.
        ocp.multihost.sync_global_processes("Checkpointer:set_aside")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into it."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
