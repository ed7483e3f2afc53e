"""Train-step throughput: tokens/s and model FLOP utilisation (MFU) of the jitted policy update
`zero_rl.train.update.update` on a synthetic rollout, and on CPU a torch reference step of the
same model (HF transformers, AdamW, same batch, lengths and clipped token-level loss).

    python bench/train_step.py                                # CPU: ~20M-parameter model
    python bench/train_step.py --preset=qwen2.5-1.5b --dtype=bfloat16 --remat=full \\
        --prompts=8 --group-size=8 --prompt-len=1024 --response-len=1024 --microbatches=4

MFU = 6 FLOPs per weight per token (forward + backward) over the step time and the matmul peak
measured in the same run. Rematerialised forwards are not counted, as is the convention. Both
steps start from the same weights, so their first-step gradient norms must agree: a check that
the two sides compute the same thing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench import common  # noqa: E402
from zero_rl.config import base_config  # noqa: E402
from zero_rl.models import ModelConfig, create_model, to_hf  # noqa: E402
from zero_rl.optim import make_optimizer  # noqa: E402
from zero_rl.rl import LossConfig  # noqa: E402
from zero_rl.train.batch import Rollout, rollout_logprobs  # noqa: E402
from zero_rl.train.update import UpdateOptions, rollout_advantages, update  # noqa: E402

LR = 1e-6
CLIP = 0.2


def synthetic_rollout(
    graphdef, params, cfg: ModelConfig, prompts: int, group: int, prompt_len: int, n: int
) -> Rollout:
    """Random full-length sequences [rows, prompt_len + n]; every group half right (rewards
    [prompts, group] of 0/1 in random order, so no group lacks signal); old, sampler and
    reference log-probs are the policy's own (ratio 1 at the first step)."""
    rng = np.random.default_rng(0)
    rows, length = prompts * group, prompt_len + n
    tokens_bt = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(rows, length), dtype=np.int32))
    positions_bt = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    rewards_pg = np.tile(np.arange(group) % 2, (prompts, 1))
    logprobs_bn = rollout_logprobs(
        graphdef, params, tokens_bt, positions_bt, prompt_len=prompt_len, num_chunks=1, chunk=512
    )
    return Rollout(
        tokens_bt=tokens_bt,
        positions_bt=positions_bt,
        mask_bn=jnp.ones((rows, n), jnp.float32),
        sampler_logprobs_bn=logprobs_bn,
        old_logprobs_bn=logprobs_bn,
        ref_logprobs_bn=logprobs_bn,
        rewards_pg=jnp.asarray(rng.permuted(rewards_pg, axis=1), jnp.float32),
        group_mask_p=jnp.ones((prompts,), jnp.float32),
    )


def torch_step_fn(model, rollout: Rollout, advantages_bn, prompt_len: int, threads: int):
    """`step()`: one torch AdamW step of the HF model on the rollout with the same clipped
    token-mean loss, on `threads` torch threads; returns the gradient norm before clipping."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[model.cfg.dtype]
    with tempfile.TemporaryDirectory() as directory:
        to_hf(model, directory, dtype="float32", overwrite=True)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
    hf_model.train()
    optimizer = torch.optim.AdamW(
        hf_model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    as_torch = lambda x: torch.from_numpy(np.array(x))
    input_ids = as_torch(rollout.tokens_bt).long()
    targets_bn = input_ids[:, prompt_len:]
    old_bn, adv_bn, mask_bn = map(
        as_torch, (rollout.old_logprobs_bn, advantages_bn, rollout.mask_bn)
    )
    n = targets_bn.shape[1]

    def step():
        optimizer.zero_grad(set_to_none=True)
        # Logits only where they predict a response token, as the jitted update computes them.
        logits_bnv = hf_model(input_ids, logits_to_keep=n + 1).logits[:, :-1].float()
        logp_bn = torch.log_softmax(logits_bnv, -1).gather(-1, targets_bn[..., None])[..., 0]
        ratio_bn = torch.exp(logp_bn - old_bn)
        clipped_bn = ratio_bn.clamp(1 - CLIP, 1 + CLIP)
        loss_bn = -torch.minimum(ratio_bn * adv_bn, clipped_bn * adv_bn)
        loss = (loss_bn * mask_bn).sum() / mask_bn.sum()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(hf_model.parameters(), 1.0)
        optimizer.step()
        return float(grad_norm)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(parser)
    parser.add_argument("--remat", default="none", help="none, full, dots_saveable, ...")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4, help="responses per prompt")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=96)
    parser.add_argument("--microbatches", type=int, default=1, help="gradient accumulation")
    parser.add_argument(
        "--torch", choices=("auto", "on", "off"), default="auto",
        help="compare with a torch reference step (auto: on CPU only)",
    )  # fmt: skip
    args = parser.parse_args()
    common.check_positive(
        prompts=args.prompts, group_size=args.group_size, prompt_len=args.prompt_len,
        response_len=args.response_len, microbatches=args.microbatches, repeats=args.repeats,
    )  # fmt: skip
    cfg = common.model_config(args, remat=args.remat)
    p, n, rows = args.prompt_len, args.response_len, args.prompts * args.group_size
    if args.group_size < 2:
        raise SystemExit("error: --group-size must be >= 2: GRPO has no signal in a group of one")
    if rows % args.microbatches:
        raise SystemExit(f"error: {rows} rows do not split into {args.microbatches} microbatches")
    run_torch = args.torch == "on" or (args.torch == "auto" and common.platform_name() == "cpu")

    threads = common.restrict_cpus(args.cpus)
    print(f"{common.device_description()}; {cfg.num_params() / 1e6:.1f}M parameters")
    limits = common.device_limits(cfg.dtype, args.peak_dim, args.bandwidth_mb)
    model = create_model(cfg, seed=0)
    graphdef, params = nnx.split(model)
    rollout = synthetic_rollout(graphdef, params, cfg, args.prompts, args.group_size, p, n)
    optim = base_config().optim
    optim.lr = LR
    tx, _ = make_optimizer(optim, total_steps=1000)
    opts = UpdateOptions(
        loss=LossConfig(clip_low=CLIP, clip_high=CLIP, aggregation="token_mean"),
        num_microbatches=args.microbatches,
    )
    fns = {}
    if run_torch:  # exported before `update` donates (and so invalidates) these params
        advantages_bn = rollout_advantages(rollout, opts)[0]
        torch_step = torch_step_fn(model, rollout, advantages_bn, p, threads)
        grad_norms = {"torch": []}
        fns["torch"] = lambda: grad_norms["torch"].append(torch_step())
    state = {"params": params, "opt_state": tx.init(params)}
    grad_norms_ours = []

    def ours():
        state["params"], state["opt_state"], metrics = update(
            graphdef, tx, state["params"], state["opt_state"], rollout, jax.random.key(0),
            opts=opts, prompt_len=p,
        )  # fmt: skip
        grad_norms_ours.append(metrics["grad_norm"])
        return metrics

    timings = common.time_interleaved({"zero_rl": ours, **fns}, repeats=args.repeats)
    step_s = timings["zero_rl"].median
    tokens = rows * (p + n)
    flops = 3 * common.forward_flops(cfg, body_tokens=tokens, logit_tokens=rows * n)
    results = {
        "num_params": cfg.num_params(),
        "rows": rows,
        "prompt_len": p,
        "response_len": n,
        **limits,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "model_flops_per_step": flops,
        "mfu": flops / step_s / limits["peak_flops"],
        "first_grad_norm": float(grad_norms_ours[0]),
    }
    rows_table = [
        ("parameters", cfg.num_params() / 1e6, "M"),
        ("measured peak", limits["peak_flops"] / 1e9, f"GFLOP/s ({cfg.dtype} matmul)"),
        ("step", step_s, f"s ({rows} rows x {p}+{n} tokens)"),
        ("throughput", results["tokens_per_s"], "tokens/s"),
        ("MFU", results["mfu"], "of measured peak"),
    ]
    if run_torch:
        torch_s = timings["torch"].median
        results |= {
            "torch_step_s": torch_s,
            "torch_tokens_per_s": tokens / torch_s,
            "torch_threads": threads,
            "speedup_vs_torch": torch_s / step_s,
            "torch_first_grad_norm": grad_norms["torch"][0],
        }
        rows_table += [
            ("torch step", torch_s, f"s ({threads} threads)"),
            ("speed-up vs torch", results["speedup_vs_torch"], "x (goal >= 1)"),
            ("first-step grad norm", results["first_grad_norm"], "zero_rl"),
            ("first-step grad norm", results["torch_first_grad_norm"], "torch (must agree)"),
        ]
    common.print_table(f"zero_rl.train.update.update, {cfg.dtype}, median of {args.repeats}",
                       rows_table)  # fmt: skip
    common.write_json(args.out, results, args)


if __name__ == "__main__":
    main()
