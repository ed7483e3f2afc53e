"""Checkpoints with orbax: asynchronous saves, last-N plus best-by-eval, safe resume.

orbax writes each step to a temporary directory and renames it when complete, so a save cut
short by a crash never looks like a checkpoint; a checkpoint that is complete but unreadable
(disk corruption) makes `restore_latest` fall back to the previous one with a warning and move
the unreadable one to `<directory>/corrupt/`, out of the way of later saves of that step and
of keep-last-N, but never deleted. Old steps are deleted only after a newer save has finished.
A `gs://` directory goes to orbax as it is; a local one is made absolute. `Checkpointer`'s
`on_phase` hook lets tests and fault-injection drills act inside a save (see its docstring).
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


# The points of a save at which `Checkpointer(on_phase=...)` is called, in their order.
PHASES = ("write", "commit", "complete")


class _WritePhaseJsonHandler(ocp.handlers.JsonCheckpointHandler):
    """orbax's JSON handler (the "meta" item), whose save adds one background commit future
    that calls `on_phase("write", step)`. orbax marks a step complete only once every commit
    future of its items is done, and this one, like the JSON write itself, first waits for the
    step's temporary directories, so the call falls inside the write window."""

    def __init__(self, on_phase: Callable[[str, int], None], saving_step: Callable[[], int]):
        super().__init__()
        self._on_phase = on_phase
        self._saving_step = saving_step

    async def async_save(self, directory, item=None, args=None):
        futures = await super().async_save(directory, item=item, args=args)
        step = self._saving_step()  # read now: async_save runs inside Checkpointer.save

        async def write_phase():
            self._on_phase("write", step)

        hook = ocp.future.CommitFutureAwaitingContractedSignals(
            write_phase(), name="checkpointer_on_phase_write"
        )
        return [*(futures or []), hook]


def _phase_path_class(directory: str, on_phase: Callable[[str, int], None]) -> type:
    """orbax's default temporary-path class for `directory` (an atomic rename on a local disk,
    a commit file on a bucket), with `on_phase("commit" / "complete", step)` around the
    finalize that marks a step complete."""
    base = ocp.path.atomicity_defaults.get_default_temporary_path_class(epath.Path(directory))
    root = str(epath.Path(directory))

    class PhasePath(base):
        async def finalize(self, *args, **kwargs):
            # orbax finalizes each item's directory inside the step's temporary one the same
            # way; only the step directory itself (a child of the root) marks a step complete.
            final = self.get_final()
            step = int(final.name) if str(final.parent) == root else None
            if step is not None:
                on_phase("commit", step)
            await super().finalize(*args, **kwargs)
            if step is not None:
                on_phase("complete", step)

    return PhasePath


class Checkpointer:
    """Saves and restores `{"state": pytree of arrays, "meta": JSON dict}` per step.

    `on_phase` is for tests and fault-injection drills; normal runs leave it None, and the
    Checkpointer then configures orbax exactly as without it. Given, it is called as
    `on_phase(phase, step)` at these points of every save of `step`:

    * "write": on every process, in a background thread of the save, while the step's items
      are being written (its temporary directory exists; the step cannot be complete yet);
    * "commit": on the primary process, all items written, just before the step is marked
      complete (the rename of its temporary directory, or the commit file on a bucket);
    * "complete": on the primary process, just after that, before the older steps that the
      retention policy drops are deleted.

    It runs in orbax's save threads (for an async save, after `save` has returned), so it can
    block to hold the save at that point, or kill the process to test crash recovery; an
    exception it raises fails the save as an I/O error there would (raised by `save` or
    `wait`).

    `read_only=True` opens an existing directory for reading (evaluation, notebooks): nothing
    is created, saved, moved or deleted, and `restore_subtree` reads part of the state (the
    params without the optimizer moments).
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        keep_best: bool = True,
        async_save: bool = True,
        on_phase: Callable[[str, int], None] | None = None,
        read_only: bool = False,
    ):
        self.directory = checkpoint_path(directory)
        self.read_only = read_only
        is_local = not _URL.match(self.directory)  # a bucket is orbax's to create and check
        if is_local and os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} exists and is a file")
        if read_only:
            if is_local and not os.path.isdir(self.directory):
                raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
            # The PyTree handler reads what StandardSave wrote and restores a part of it.
            self._manager = ocp.CheckpointManager(
                self.directory,
                item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(read_only=True),
            )  # fmt: skip
            return
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
        # orbax's own choice unless the "commit" and "complete" phases need hooking.
        path_class = None if on_phase is None else _phase_path_class(self.directory, on_phase)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
            temporary_path_class=path_class,
        )
        self._saving_step = -1  # the step of the save under way, for the "write" phase
        if on_phase is None:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        else:
            # The handlers orbax would pick for these args, "meta"'s with the "write" hook.
            registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
            state = ocp.handlers.StandardCheckpointHandler()
            meta = _WritePhaseJsonHandler(on_phase, lambda: self._saving_step)
            registry.add("state", ocp.args.StandardSave, state)
            registry.add("state", ocp.args.StandardRestore, state)
            registry.add("meta", ocp.args.JsonSave, meta)
            registry.add("meta", ocp.args.JsonRestore, meta)
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, handler_registry=registry
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
        if self.read_only:
            raise ValueError(f"checkpoint directory {self.directory} was opened read-only")
        if step in self._manager.all_steps():
            return False
        self._saving_step = step
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

    def restore_meta(self, step: int) -> dict:
        """The metadata saved with `step`."""
        return dict(
            self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
        )

    def state_structure(self, step: int) -> Any:
        """The saved state's tree of array metadata (shapes, dtypes) at `step`, nothing read."""
        metadata = self._manager.item_metadata(step)["state"]
        return metadata.tree if hasattr(metadata, "tree") else metadata

    def restore_subtree(self, step: int, abstract_subtree: Any) -> Any:
        """The part of the saved state that `abstract_subtree` (ShapeDtypeStructs with
        shardings, e.g. `{"params": ...}`) names, restored onto its shardings; the rest of the
        state (the optimizer moments) is not read."""
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract_subtree, restore_args=restore_args, partial_restore=True
                )
            ),
        )
        return restored["state"]

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
        if not steps or self.read_only:
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
        if not self.read_only:
            self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into it."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
