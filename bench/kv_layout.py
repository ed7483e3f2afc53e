"""KV cache layout for the rollout engine: per-slot regions against paged blocks, measured.

One decode step's attention of every slot over its cache, for all layers, at the 20M bench
shape: (a) per-slot regions [slots, kv_heads, context, head_dim], read in place as the engine
does (scores as [slots, kv_heads, context, group]; also timed with the earlier
[.., group, context] scores), and (b) paged blocks, a pool [blocks, kv_heads, block, head_dim]
read through a per-slot block table (a gather, as a vLLM-style pool does in XLA without a
custom kernel). Both are timed in one process, interleaved, against a whole decode step of the
same model, so the ratios say what each layout costs and how much of a step attention is.

    python bench/kv_layout.py --cpus=2
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from zero_rl.models import create_model  # noqa: E402
from zero_rl.models.layers import attend_decode  # noqa: E402
from zero_rl.sampling import SamplingOptions, generate_padded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(parser)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--context", type=int, default=1088, help="prompt + response slots")
    parser.add_argument("--block", type=int, default=64, help="tokens per paged block")
    args = parser.parse_args()
    common.check_positive(slots=args.slots, context=args.context, block=args.block)
    if args.context % args.block:
        raise SystemExit(f"error: --block={args.block} must divide --context={args.context}")
    common.restrict_cpus(args.cpus)
    cfg = common.model_config(args, max_position=args.context)
    s, c, b = args.slots, args.context, args.block
    kv, hd, layers = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    group = cfg.num_heads // kv
    print(f"{common.device_description()}; {cfg.num_params() / 1e6:.1f}M parameters")
    keys = jax.random.split(jax.random.key(0), 4)
    dt = cfg.compute_dtype
    q_lskgh = jax.random.normal(keys[0], (layers, s, kv, group, hd), dt)
    regions_k = jax.random.normal(keys[1], (layers, s, kv, c, hd), dt)
    regions_v = jax.random.normal(keys[2], (layers, s, kv, c, hd), dt)
    valid_sc = jnp.ones((s, c), bool)
    # The same keys and values as a pool of blocks, each slot's blocks scattered in the pool.
    blocks = s * c // b
    perm = np.random.default_rng(0).permutation(blocks)
    table_sn = jnp.asarray(perm.reshape(s, c // b), jnp.int32)

    def to_pool(x):  # [l, s, kv, c, hd] -> [l, blocks, kv, b, hd] in the table's order
        x = x.reshape(layers, s, kv, c // b, b, hd).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(layers, blocks, kv, b, hd)
        return jnp.zeros_like(x).at[:, perm].set(x)

    pool_k, pool_v = to_pool(regions_k), to_pool(regions_v)
    # One array per layer, as the engine's unrolled cache holds them: a slice of a stacked
    # array inside the program would be fused into the matmul and time something else.
    q_lskgh, regions_k, regions_v, pool_k, pool_v = (
        list(x) for x in (q_lskgh, regions_k, regions_v, pool_k, pool_v)
    )

    @jax.jit
    def regions(q, k, v):
        return [attend_decode(q[i], [k[i]], [v[i]], [valid_sc]) for i in range(layers)]

    @jax.jit
    def regions_group_major(q, k, v):  # scores as [.., group, slots]: the earlier layout
        def attend(q_skgh, k_skch, v_skch):
            s_skgc = jnp.einsum("skgh,skch->skgc", q_skgh, k_skch) / np.sqrt(hd)
            p_skgc = jax.nn.softmax(jnp.where(valid_sc[:, None, None], s_skgc, -1e30), axis=-1)
            return jnp.einsum("skgc,skch->skgh", p_skgc, v_skch)

        return [attend(q[i], k[i], v[i]) for i in range(layers)]

    @jax.jit
    def paged(q, k, v, table):
        def gather(pool):  # [blocks, kv, b, hd] -> [s, kv, c, hd]
            x = pool[table]  # [s, c // b, kv, b, hd]
            return x.transpose(0, 2, 1, 3, 4).reshape(s, kv, c, hd)

        return [
            attend_decode(q[i], [gather(k[i])], [gather(v[i])], [valid_sc]) for i in range(layers)
        ]

    out_a = regions(q_lskgh, regions_k, regions_v)
    out_b = paged(q_lskgh, pool_k, pool_v, table_sn)
    out_c = regions_group_major(q_lskgh, regions_k, regions_v)
    for out in (out_b, out_c):
        np.testing.assert_allclose(np.asarray(out_a[0]), np.asarray(out[0]), rtol=1e-5, atol=1e-5)

    # A whole engine decode step of the same shape: the engine's time per slot-step on a
    # workload where every slot runs the full context (fixed budgets, no refills).
    model = create_model(cfg, seed=0)
    prompt_len, n = 64, c - 64
    tokens_pt = jnp.ones((s, prompt_len), jnp.int32)
    positions_pt = jnp.broadcast_to(jnp.arange(prompt_len), (s, prompt_len)).astype(jnp.int32)
    options = SamplingOptions(max_prompt_len=prompt_len, max_new_tokens=n, slots=s)

    def engine_call():
        return generate_padded(model, tokens_pt, positions_pt, options).output.lengths_b

    t = common.time_interleaved(
        {
            "regions": lambda: regions(q_lskgh, regions_k, regions_v),
            "paged": lambda: paged(q_lskgh, pool_k, pool_v, table_sn),
            "group_major": lambda: regions_group_major(q_lskgh, regions_k, regions_v),
        },
        repeats=args.repeats,
    )
    step_s = common.time_call(engine_call, repeats=1).median / n
    rows = [
        ("attention, per-slot regions", t["regions"].median * 1e3, "ms per step (all layers)"),
        ("attention, paged blocks", t["paged"].median * 1e3, "ms per step (gather + attend)"),
        ("paged / regions", t["paged"].median / t["regions"].median, "x"),
        ("regions, scores [group, slots]", t["group_major"].median * 1e3, "ms (earlier layout)"),
        ("[group, slots] / regions", t["group_major"].median / t["regions"].median, "x"),
        ("engine decode step", step_s * 1e3, f"ms ({s} slots, {c} context, mean over {n})"),
        ("regions attention share", t["regions"].median / step_s, "of a full-context step"),
    ]
    common.print_table(f"KV layout, {s} slots x {c} tokens, blocks of {b}", rows)
    common.write_json(
        args.out,
        {
            "regions_s": t["regions"].median,
            "paged_s": t["paged"].median,
            "paged_over_regions": t["paged"].median / t["regions"].median,
            "group_major_s": t["group_major"].median,
            "engine_step_s": step_s,
        },
        args,
    )


if __name__ == "__main__":
    main()
