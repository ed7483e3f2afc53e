"""Supervised fine-tuning on packed (prompt, response) documents.

The step is one jitted function of a plain pytree `{"params", "opt_state", "step"}`, donated so
the update happens in place; gradient accumulation is a `lax.scan` over microbatches inside it.
The loss is the summed negative log-likelihood of response tokens divided by the number of
response tokens in the whole *step*, not per microbatch or per document: then accumulating
microbatches gives exactly the gradient of one big batch, and packing documents into shared rows
gives exactly the gradient of one document per row.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zero_rl import sharding
from zero_rl.checkpoint import Checkpointer
from zero_rl.data.records import RecordError, _iter_records
from zero_rl.data.sft_formats import get_converter
from zero_rl.models import Transformer, param_shardings, token_logprobs
from zero_rl.optim import make_optimizer, sharded_init
from zero_rl.summaries import SummaryWriter
from zero_rl.tokenizer import Tokenizer
from zero_rl.train.metrics import CompileCounter
from zero_rl.train.packing import packed_batches

BATCH_AXES = ("batch", "length")

log = logging.getLogger(__name__)


def tokenize_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) per pair. The prompt gets BOS when the model expects it,
    exactly as the sampler encodes prompts, so RL later continues the same token sequences."""
    if len(pairs) == 0:
        raise ValueError("no (prompt, response) pairs to train on")
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise TypeError(f"pair {i} must be (prompt: str, response: str), got {pair!r:.100}")
    prompts = tokenizer.batch_encode([p for p, _ in pairs], add_bos=tokenizer.add_bos_default)
    responses = tokenizer.batch_encode([r for _, r in pairs], add_eos=True)
    return list(zip(prompts, responses, strict=True))


@dataclasses.dataclass
class SFTPairs:
    """(prompt, response) pairs read from one file, and a `path:line: reason` message per
    skipped record."""

    pairs: list[tuple[str, str]]
    skipped: list[str]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def read_sft_pairs(
    path: str | os.PathLike,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    format: str = "fields",
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> SFTPairs:
    """(prompt, response) pairs from the records of a .jsonl, .json or .parquet file.

    `format` maps a record to its pair: "fields" (the default) takes the string fields
    `prompt_field` and `response_field` verbatim; the others read a public long-CoT dataset's
    own fields (`zero_rl.data.sft_formats` lists them). A record the format cannot use raises a
    RecordError naming the file, line/row and reason (`on_error="raise"`), or is left out and
    counted in `SFTPairs.skipped` ("skip").
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    convert = get_converter(format, prompt_field=prompt_field, response_field=response_field)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SFT data file at {path}")
    pairs, skipped = [], []
    for location, record in _iter_records(path):
        if limit is not None and len(pairs) >= limit:
            break
        if isinstance(record, Exception):
            result = str(record)
        elif not isinstance(record, dict):
            result = f"record is a {type(record).__name__}, not an object"
        else:
            result = convert(record)
        if isinstance(result, str):
            if on_error == "raise":
                raise RecordError(f"{path}:{location}: {result}")
            skipped.append(f"{path}:{location}: {result}")
            continue
        pairs.append(result)
    if skipped:
        log.warning("%s: skipped %d bad records, first: %s", path, len(skipped), skipped[0])
    if not pairs:
        raise RecordError(f"{path}: no usable records ({len(skipped)} skipped)")
    return SFTPairs(pairs, skipped)


def data_fingerprint(docs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
    """sha256 of every document's prompt and response token ids, in order: a checkpoint taken
    on other pairs, another template or another tokenizer has another fingerprint."""
    digest = hashlib.sha256()
    for prompt, response in docs:
        digest.update(np.asarray([len(prompt), len(response)], np.int64).tobytes())
        digest.update(np.asarray([*prompt, *response], np.int64).tobytes())
    return digest.hexdigest()


def _data_meta(sft_cfg, docs) -> dict[str, Any]:
    """What decides the packed batch stream; saved with each checkpoint, checked on resume."""
    return {
        "num_docs": len(docs),
        "seed": int(sft_cfg.seed),
        "seq_len": int(sft_cfg.seq_len),
        "batch_size": int(sft_cfg.batch_size),
        "overflow": sft_cfg.overflow,
        "data_fingerprint": data_fingerprint(docs),
    }


def _check_resume(meta: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Refuses to resume on other data: the step count would continue, the stream would not."""
    for key, value in expected.items():
        if key not in meta:  # a checkpoint written before its data was recorded
            log.warning("%s does not record %s; cannot check it matches this run", where, key)
        elif meta[key] != value:
            raise ValueError(
                f"{where} was trained with {key}={meta[key]!r} but this run has {key}={value!r}; "
                "resuming would not continue the same data stream: use the original data and "
                "settings, or another workdir"
            )


def response_nll_sum(
    params: nnx.State, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef, logits_chunk: int
) -> jax.Array:
    """Summed -log p of the response tokens of a batch of [rows, seq_len] arrays (a scalar)."""
    model = nnx.merge(graphdef, params)
    logprobs_bt, _ = token_logprobs(
        model,
        batch["tokens_bt"],
        batch["positions_bt"],
        batch["segment_ids_bt"],
        chunk_size=logits_chunk,
    )
    return -jnp.sum(logprobs_bt * batch["loss_mask_bt"])


def loss_and_grads(
    params: nnx.State,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    grad_accum: int = 1,
    logits_chunk: int = 512,
) -> tuple[jax.Array, nnx.State]:
    """Mean NLL per response token of the batch, and its float32 gradient.

    `grad_accum` microbatches of rows/grad_accum rows each go through the model one at a time
    (bounding activation memory); all share the normaliser of the whole batch.
    """
    rows = batch["tokens_bt"].shape[0]
    if rows % grad_accum:
        raise ValueError(f"{rows} rows do not split into grad_accum={grad_accum} microbatches")
    num_targets = jnp.maximum(jnp.sum(batch["loss_mask_bt"]), 1.0)

    def mean_nll(p, micro):
        return (
            response_nll_sum(p, micro, graphdef=graphdef, logits_chunk=logits_chunk) / num_targets
        )

    grad_fn = jax.value_and_grad(mean_nll)
    to_f32 = functools.partial(jax.tree.map, lambda g: g.astype(jnp.float32))
    if grad_accum == 1:
        loss, grads = grad_fn(params, batch)
        return loss, to_f32(grads)
    # Microbatch m takes rows m, m + A, m + 2A, ...: with rows sharded contiguously over devices,
    # every microbatch then stays spread over all devices and no rows move between them.
    micro_batches = jax.tree.map(
        lambda x: x.reshape(rows // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch
    )

    def accumulate(carry, micro):
        loss_sum, grad_sum = carry
        micro = {k: sharding.constrain(v, BATCH_AXES) for k, v in micro.items()}
        loss, grads = grad_fn(params, micro)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, to_f32(grads))), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss, grads), _ = jax.lax.scan(accumulate, (jnp.float32(0.0), zeros), micro_batches)
    return loss, grads


def train_step(
    state: dict,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum: int,
    logits_chunk: int = 512,
) -> tuple[dict, dict[str, jax.Array]]:
    """One optimiser update on a batch of [rows, seq_len] arrays; returns (state, metrics)."""
    loss, grads = loss_and_grads(
        state["params"], batch, graphdef=graphdef, grad_accum=grad_accum, logits_chunk=logits_chunk
    )
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "sft/loss": loss,
        "sft/grad_norm": optax.tree.norm(grads),
        "sft/learning_rate": schedule(state["step"]),
    }
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def _abstract_state(model: Transformer, params: nnx.State, optimizer, mesh: Mesh):
    """ShapeDtypeStructs (with shardings) of the train state, and the sharded optimiser init."""
    # param_shardings holds bare shardings; put them in the params' own Param nodes so the two
    # pytrees have one structure.
    params_sh = jax.tree.map(lambda s, v: v.replace(s), param_shardings(model.cfg, mesh), params)
    abstract_params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, params_sh
    )
    init_opt_state = sharded_init(optimizer, abstract_params)
    abstract_state = {
        "params": abstract_params,
        "opt_state": jax.eval_shape(init_opt_state, abstract_params),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec())),
    }
    return abstract_state, init_opt_state


def _check_config(sft_cfg, model: Transformer, tokenizer: Tokenizer, mesh: Mesh) -> None:
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "checkpoint_every"):
        if sft_cfg[name] < 1:
            raise ValueError(f"sft.{name} must be >= 1, got {sft_cfg[name]}")
    if sft_cfg.batch_size % sft_cfg.grad_accum:
        raise ValueError(
            f"sft.batch_size={sft_cfg.batch_size} is not a multiple of "
            f"sft.grad_accum={sft_cfg.grad_accum}"
        )
    # Rows that do not split evenly over the batch-parallel devices would be replicated: every
    # device would compute the whole microbatch.
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if (sft_cfg.batch_size // sft_cfg.grad_accum) % batch_devices:
        raise ValueError(
            f"a microbatch of sft.batch_size / sft.grad_accum = "
            f"{sft_cfg.batch_size // sft_cfg.grad_accum} rows does not split over the "
            f"{batch_devices} devices of mesh axes data x fsdp"
        )
    if sft_cfg.seq_len > model.cfg.max_position:
        raise ValueError(
            f"sft.seq_len={sft_cfg.seq_len} exceeds the model's max_position="
            f"{model.cfg.max_position}; raise model.max_position (and rope_theta for long context)"
        )
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{model.cfg.vocab_size} embeddings"
        )


def _global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The batch as global arrays, rows over ("data", "fsdp"). Every process holds the whole
    batch (packing is deterministic), so each device just takes its own slice."""
    return {
        k: jax.make_array_from_callback(
            v.shape, sharding.named_sharding(BATCH_AXES, v.shape, mesh), lambda index, v=v: v[index]
        )
        for k, v in host_batch.items()
    }


class _Progress:
    """Per-step scalars to TensorBoard and a progress line every `log_every` steps. Metrics stay
    on device until the end of an interval: one host sync per interval, not per step."""

    def __init__(self, workdir: str | None, total_steps: int, log_every: int):
        self.total_steps, self.log_every = total_steps, log_every
        self.writer = SummaryWriter(
            os.path.join(workdir or "", "tb"), enabled=None if workdir else False
        )
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.tokens, self.since = 0, time.perf_counter()

    def add(self, step: int, metrics: dict[str, jax.Array], num_tokens: int) -> None:
        self.pending.append((step, metrics))
        self.tokens += num_tokens
        if step % self.log_every and step != self.total_steps:
            return
        fetched = jax.device_get(self.pending)
        for s, values in fetched:
            self.writer.scalars(s, values)
        now = time.perf_counter()
        tokens_per_s = self.tokens / (now - self.since)
        compiles = CompileCounter.count()
        self.writer.scalars(step, {"sft/tokens_per_s": tokens_per_s, "perf/num_compiles": compiles})
        last = fetched[-1][1]
        if jax.process_index() == 0:
            print(
                f"sft step {step}/{self.total_steps} loss {last['sft/loss']:.4f} "
                f"lr {last['sft/learning_rate']:.2e} grad_norm {last['sft/grad_norm']:.3f} "
                f"tokens/s {tokens_per_s:,.0f}",
                flush=True,
            )
        self.pending, self.tokens, self.since = [], 0, now

    def close(self) -> None:
        self.writer.close()


def train_sft(
    sft_cfg,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    workdir: str | None,
    mesh: Mesh | None = None,
) -> Transformer:
    """Fine-tunes `model` on (prompt, response) text pairs; returns it with the trained weights.

    The model is updated in place and returned. Parameters already placed on `mesh` are not
    copied but donated to the first step, so the model is unusable if training fails. With a
    `workdir`, TensorBoard scalars go to `workdir/tb` and orbax checkpoints to
    `workdir/sft_checkpoints`, from which a restarted run resumes at the step it reached, on the
    same data order; a checkpoint taken on other data (count, seed, seq_len, batch size or
    token fingerprint, see `_data_meta`) makes it raise rather than resume.

    Args:
      sft_cfg: ConfigDict with steps, batch_size (packed rows per step), seq_len, grad_accum,
        seed, log_every, checkpoint_every, optim (see `make_optimizer`), and optionally
        overflow ("error" or "truncate" for documents longer than seq_len) and logits_chunk.
      mesh: defaults to `sharding.make_mesh()` (FSDP over all devices); rows are split over
        ("data", "fsdp").
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    _check_config(sft_cfg, model, tokenizer, mesh)
    CompileCounter.install()
    docs = tokenize_pairs(tokenizer, pairs)
    data_meta = _data_meta(sft_cfg, docs)
    optimizer, schedule = make_optimizer(sft_cfg.optim, sft_cfg.steps)
    graphdef, params = nnx.split(model)
    abstract_state, init_opt_state = _abstract_state(model, params, optimizer, mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, abstract_state)

    restored = None
    checkpointer = None
    if workdir is not None:
        checkpointer = Checkpointer(os.path.join(workdir, "sft_checkpoints"), keep_best=False)
        restored = checkpointer.restore_latest(abstract_state)
    if restored is None:
        start_step = 0
        params = jax.device_put(params, state_sh["params"])
        step = jax.device_put(jnp.int32(0), state_sh["step"])
        state = {"params": params, "opt_state": init_opt_state(params), "step": step}
    else:
        start_step, state, meta = restored
        try:
            _check_resume(meta, data_meta, f"SFT checkpoint {checkpointer.directory}/{start_step}")
        except ValueError:
            checkpointer.close()
            raise
    del params

    step_fn = jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            optimizer=optimizer,
            schedule=schedule,
            grad_accum=sft_cfg.grad_accum,
            logits_chunk=sft_cfg.logits_chunk,
        ),
        donate_argnums=0,
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
    )
    batches = packed_batches(
        docs,
        seq_len=sft_cfg.seq_len,
        pad_id=tokenizer.pad_id,
        batch_rows=sft_cfg.batch_size,
        seed=sft_cfg.seed,
        start_step=start_step,
        overflow=sft_cfg.overflow,
    )
    if jax.process_index() == 0:
        todo = (
            f"steps {start_step + 1}..{sft_cfg.steps}"
            if start_step < sft_cfg.steps
            else f"nothing to do: the checkpoint is at step {start_step}"
        )
        print(
            f"sft: {len(docs)} documents, {todo}, "
            f"{sft_cfg.batch_size} rows x {sft_cfg.seq_len} tokens per step",
            flush=True,
        )
    progress = _Progress(workdir, sft_cfg.steps, sft_cfg.log_every)
    try:
        with sharding.activation_sharding(mesh):
            for step in range(start_step + 1, sft_cfg.steps + 1):
                host_batch = next(batches)
                state, metrics = step_fn(state, _global_batch(host_batch, mesh))
                progress.add(step, metrics, int(np.count_nonzero(host_batch["segment_ids_bt"])))
                if checkpointer is not None and (
                    step % sft_cfg.checkpoint_every == 0 or step == sft_cfg.steps
                ):
                    checkpointer.save(step, state, {"step": step, **data_meta})
    finally:  # an interrupted run still finishes its last checkpoint and event file
        progress.close()
        if checkpointer is not None:
            checkpointer.close()
    nnx.update(model, state["params"])
    return model
