"""What a training step logs: its scalars, sample texts, the compile counter and the progress
line (written with `zero_rl.summaries.SummaryWriter`)."""

from __future__ import annotations

import threading

from jax._src import monitoring

from zero_rl.summaries import SummaryWriter

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compilations in this process (cumulative, thread-safe).

    A training run must stop compiling after its first steps; `perf/num_compiles` shows it.
    """

    _lock = threading.Lock()
    _count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._installed:
                return
            cls._installed = True

        def listener(event: str, duration_secs: float, **kwargs) -> None:
            if event == _BACKEND_COMPILE_EVENT:
                with cls._lock:
                    cls._count += 1

        monitoring.register_event_duration_secs_listener(listener)

    @classmethod
    def count(cls) -> int:
        cls.install()
        return cls._count


def step_metrics(
    stats: dict[str, float], m: dict, *, learning_rate: float, step_time_s: float
) -> dict[str, float]:
    """One RL step's scalars: the rollout's host statistics plus the update's metrics `m` (on
    the host). `train/kl` only when there is a reference to measure it against."""
    metrics = dict(stats)
    # No reference, no KL: a logged 0 would claim the policy has not moved. With the KL in the
    # reward instead of the loss, it is the one measured on the rollout.
    if "kl" in m:
        metrics["train/kl"] = float(m["kl"])
    elif "adv/kl_in_reward" in m:
        metrics["train/kl"] = float(m["adv/kl_in_reward"])
    if "vf_loss" in m:
        metrics["train/vf_loss"] = float(m["vf_loss"])
        metrics["train/vf_explained_variance"] = float(m["explained_variance"])
    metrics.update({
        "train/entropy": float(m["entropy"]),
        "train/clip_frac": float(m["clip_frac_low"] + m["clip_frac_high"]),
        "train/clip_frac_low": float(m["clip_frac_low"]),
        "train/clip_frac_high": float(m["clip_frac_high"]),
        "train/approx_kl": float(m["approx_kl"]),
        "train/grad_norm": float(m["grad_norm"]),
        "train/loss": float(m["loss"]),
        "train/zero_signal_frac": float(m["adv/zero_signal_frac"]),
        "train/sampler_logprob_gap": float(m["sampler_logprob_gap_mean"]),
        "train/learning_rate": learning_rate,
        "perf/step_time_s": step_time_s,
        "perf/sample_tokens_per_s": stats["perf/sample_tokens"]
        / max(stats["perf/sample_time_s"], 1e-9),
        "perf/num_compiles": float(CompileCounter.count()),
    })  # fmt: skip
    return metrics


def log_samples(writer: SummaryWriter, step: int, result, count: int) -> None:
    """`count` responses of a `RolloutResult` with their verdicts as TensorBoard text
    (`samples/<i>`): one from each of `count` prompts spread over the batch, then further
    samples of the same prompts when `count` exceeds the prompts."""
    num_groups = len(result.examples)
    group = len(result.texts) // num_groups
    stride = max(num_groups // max(count, 1), 1)
    for i in range(min(count, len(result.texts))):
        g, sample = (i * stride) % num_groups, (i * stride) // num_groups
        row = g * group + sample % group
        v, example = result.verdicts[row], result.examples[g]
        header = (f"**prompt {example.id}: correct={v.correct} extracted={v.extracted!r} "
                  f"gold={example.answer!r}**")  # fmt: skip
        writer.text(step, f"samples/{i}", f"{header}\n\n{example.prompt}\n\n{result.texts[row]}")


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """The one-line per-step log: step, reward, accuracy, length, KL (when there is a
    reference), time."""
    kl = f"kl {metrics['train/kl']:.2e} " if "train/kl" in metrics else ""
    return (
        f"step {step}/{total} reward {metrics.get('train/reward_mean', float('nan')):+.3f} "
        f"acc {metrics.get('train/accuracy', float('nan')):.3f} "
        f"len {metrics.get('train/response_length_mean', float('nan')):.1f} "
        f"{kl}time {metrics.get('perf/step_time_s', float('nan')):.2f}s"
    )
