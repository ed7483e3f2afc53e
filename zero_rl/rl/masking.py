"""Masks, packed segments and per-sequence reductions shared by the RL objectives.

Token arrays are `[batch, time]`. A row holds either one sequence (padded layout,
`segment_ids_bt=None`) or several sequences packed back to back, told apart by
`segment_ids_bt` (int, 0 = padding, 1..S = the sequences of that row, S <= time). `mask_bt`
is 1.0 on the response tokens that count and 0.0 elsewhere. Every function here gives the
same per-sequence answer for a padded batch and for the same sequences packed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    """Raises a ValueError naming `name` and listing `valid` when `value` is not one of them."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")


def check_token_arrays(**arrays_bt: jax.Array | None) -> tuple[int, int]:
    """Checks that the given (non-None) token arrays are 2-D and share one shape.

    Returns:
      The common `(batch, time)` shape.
    """
    shapes = {name: jnp.shape(x) for name, x in arrays_bt.items() if x is not None}
    first_name, first_shape = next(iter(shapes.items()))
    if len(first_shape) != 2:
        raise ValueError(f"{first_name} must be [batch, time]; got shape {first_shape}")
    for name, shape in shapes.items():
        if shape != first_shape:
            raise ValueError(
                f"{name} has shape {shape} but {first_name} has {first_shape}; "
                "token arrays must all be [batch, time]"
            )
    return first_shape


def at_least_float32(x: jax.Array | None) -> jax.Array | None:
    """`x` promoted to float32 unless it is already wider; None stays None."""
    if x is None:
        return None
    return jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32))


def zero_outside(x: jax.Array, mask: jax.Array) -> jax.Array:
    """`x` where `mask` is nonzero, 0 elsewhere.

    A select rather than `x * mask`, so that inf or nan in uncounted positions (a -inf log-prob
    on padding, an undefined sampler log-prob on the prompt) cannot leak into sums.
    """
    return jnp.where(mask > 0, x, 0.0)


def effective_mask(mask_bt: jax.Array, segment_ids_bt: jax.Array | None) -> jax.Array:
    """`mask_bt` as float32, also zeroed on padding (`segment_ids_bt == 0`) when packed."""
    mask_bt = jnp.asarray(mask_bt, jnp.float32)
    if segment_ids_bt is None:
        return mask_bt
    return mask_bt * (segment_ids_bt > 0)


def _slot_ids(segment_ids_bt: jax.Array | None, shape: tuple[int, int]) -> tuple[jax.Array, int]:
    """Per-token sequence slot within its row, and the number of slots per row."""
    if segment_ids_bt is None:
        return jnp.zeros(shape, jnp.int32), 1
    return jnp.asarray(segment_ids_bt, jnp.int32), shape[1] + 1


def sequence_sums(
    x_bt: jax.Array, segment_ids_bt: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Sums `x_bt` over the tokens of each sequence.

    Args:
      x_bt: [batch, time] values, already zeroed outside the mask where that matters.
      segment_ids_bt: [batch, time] packed segment ids, or None for one sequence per row.

    Returns:
      `(sums_bs, slot_ids_bt)`: sums_bs is [batch, slots] (slots = 1 when padded, time + 1
      when packed, indexed by segment id) and slot_ids_bt maps each token to its slot.
    """
    slot_ids_bt, num_slots = _slot_ids(segment_ids_bt, x_bt.shape)
    if segment_ids_bt is None:
        return jnp.sum(x_bt, axis=-1, keepdims=True), slot_ids_bt
    segment_sum_row = lambda x_t, ids_t: jax.ops.segment_sum(x_t, ids_t, num_segments=num_slots)
    return jax.vmap(segment_sum_row)(x_bt, slot_ids_bt), slot_ids_bt


def sequence_mean_bt(
    x_bt: jax.Array, mask_bt: jax.Array, segment_ids_bt: jax.Array | None = None
) -> jax.Array:
    """Masked mean of `x_bt` over each sequence, broadcast back to that sequence's tokens.

    Returns:
      [batch, time]; every token carries the mean over the counted tokens of its sequence
      (0 for a sequence with no counted token).
    """
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    sums_bs, slot_ids_bt = sequence_sums(zero_outside(x_bt, mask_bt), segment_ids_bt)
    counts_bs, _ = sequence_sums(mask_bt, segment_ids_bt)
    means_bs = sums_bs / jnp.maximum(counts_bs, 1.0)
    return jnp.take_along_axis(means_bs, slot_ids_bt, axis=1)


def last_token_mask(mask_bt: jax.Array, segment_ids_bt: jax.Array | None = None) -> jax.Array:
    """1.0 on the last counted token of each sequence, 0.0 elsewhere. Shape [batch, time]."""
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    slot_ids_bt, num_slots = _slot_ids(segment_ids_bt, mask_bt.shape)
    positions_bt = jnp.broadcast_to(jnp.arange(mask_bt.shape[1]), mask_bt.shape)
    counted_positions_bt = jnp.where(mask_bt > 0, positions_bt, -1)
    segment_max_row = lambda x_t, ids_t: jax.ops.segment_max(x_t, ids_t, num_segments=num_slots)
    last_position_bs = jax.vmap(segment_max_row)(counted_positions_bt, slot_ids_bt)
    last_position_bt = jnp.take_along_axis(last_position_bs, slot_ids_bt, axis=1)
    return ((positions_bt == last_position_bt) & (mask_bt > 0)).astype(jnp.float32)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over entries where `mask` is 1; 0 when the mask is empty."""
    return jnp.sum(zero_outside(x, mask)) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Max of `x` over entries where `mask` is 1; 0 when the mask is empty."""
    return jnp.where(jnp.any(mask > 0), jnp.max(jnp.where(mask > 0, x, -jnp.inf)), 0.0)


def masked_min(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Min of `x` over entries where `mask` is 1; 0 when the mask is empty."""
    return -masked_max(-x, mask)


def masked_whiten(
    x: jax.Array, mask: jax.Array, *, eps: float = 1e-6, shift_mean: bool = True
) -> jax.Array:
    """`(x - mean) / (std + eps)` with mean and population std over the masked entries.

    Masked-out entries come back as 0.
    """
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
    centered = x - mean if shift_mean else x
    return zero_outside(centered / (std + eps), mask)
