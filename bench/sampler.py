"""Sampler throughput: prefill and decode tokens/s of `zero_rl.sampler` against the roofline,
and on CPU against HF transformers `generate` (torch) with the same random weights.

    python bench/sampler.py                                   # CPU: ~20M-parameter model
    python bench/sampler.py --preset=qwen2.5-1.5b --dtype=bfloat16 --param-dtype=bfloat16 \\
        --batch=64 --prompt-len=256 --new-tokens=1024         # an accelerator

Decode is memory-bound: its roofline time is the bytes each step must read (every weight once,
plus the filled part of the KV cache) over the measured bandwidth. Prefill is compute-bound: its
roofline is 2 FLOPs per weight per token over the measured matmul peak. Decoding is greedy (or
sampled with `--temperature`, `--top-p`, `--top-k`, on both sides) with no stop token, so every
row produces exactly `--new-tokens` tokens on both sides.
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
from zero_rl import sampler  # noqa: E402
from zero_rl.models import ModelConfig, create_model, to_hf  # noqa: E402


def random_prompts(cfg: ModelConfig, batch: int, prompt_len: int, seed: int = 0):
    """Full-length prompts (no padding) [batch, prompt_len] and their positions."""
    rng = np.random.default_rng(seed)
    tokens_bt = rng.integers(0, cfg.vocab_size, size=(batch, prompt_len), dtype=np.int32)
    positions_bt = np.broadcast_to(np.arange(prompt_len, dtype=np.int32), tokens_bt.shape)
    return jnp.asarray(tokens_bt), jnp.asarray(positions_bt)


def zero_rl_fns(
    model, tokens_bt, positions_bt, new_tokens: int, decode_segments: int = 1, *,
    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
):  # fmt: skip
    """(prefill, decode, generate) of `zero_rl.sampler`: `decode(prefill())` runs the decode
    alone (it donates the cache, so each call needs a fresh prefill), `generate()` is
    `generate_padded` end to end and returns the tokens [batch, new_tokens]. Greedy at
    temperature 0, else sampled with the given temperature / top-p / top-k."""
    graphdef, params = nnx.split(model)
    # The same static options `generate_padded` builds, so all three run the same programs.
    static = sampler._Static(
        num_samples=1, max_new_tokens=new_tokens, greedy=temperature == 0, top_k=top_k,
        top_p=top_p, stop_token_ids=(), pad_id=0, cache_dtype=None,
        decode_segments=decode_segments, unroll_layers=sampler._unroll_layers(params),
    )  # fmt: skip
    rng = jax.random.key(0)

    def prefill():
        return sampler.prefill_jit(graphdef, params, tokens_bt, positions_bt, static=static)

    def decode(prefilled):
        cache, logits_bv, next_pos_b = prefilled
        t = jnp.float32(max(temperature, 1e-6))
        rows = logits_bv.shape[0]
        budgets = jnp.full((rows,), new_tokens, jnp.int32)  # every row runs to the cap
        no_stop_strings = jnp.zeros((1, model.cfg.vocab_size), jnp.int32)
        return sampler.decode_jit(
            graphdef, params, cache, logits_bv, next_pos_b, rng, t, budgets, no_stop_strings,
            static=static,
        )[0].tokens_bn  # fmt: skip

    def generate():
        return sampler.generate_padded(
            (graphdef, params), tokens_bt, positions_bt, max_new_tokens=new_tokens, rng=rng,
            temperature=temperature, top_p=top_p, top_k=top_k, decode_segments=decode_segments,
        ).tokens_bn  # fmt: skip

    return prefill, decode, generate


def hf_generate_fn(model, tokens_bt, threads: int, temperature=0.0, top_p=1.0, top_k=0):
    """`generate(n)`: HF transformers generation of n tokens [batch, n] (KV cache on), greedy
    at temperature 0, else sampled with the same temperature / top-p / top-k, from the same
    weights exported with `to_hf`, on `threads` torch threads."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[model.cfg.dtype]
    with tempfile.TemporaryDirectory() as directory:
        to_hf(model, directory, dtype="float32", overwrite=True)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
    hf_model.eval()
    input_ids = torch.from_numpy(np.asarray(tokens_bt, np.int64))
    # HF's generation config defaults to top_k=50: pass every option explicitly.
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        if temperature > 0
        else dict(do_sample=False)
    )
    attention_mask = torch.ones_like(input_ids)

    def generate(n):
        with torch.inference_mode():
            # No EOS in the exported config; min_new_tokens makes the length explicit anyway.
            out = hf_model.generate(
                input_ids, attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n,
                pad_token_id=0, **sampling,
            )  # fmt: skip
        return out[:, input_ids.shape[1] :].numpy()

    return generate


def greedy_agreement(a_bn: np.ndarray, b_bn: np.ndarray) -> float:
    """Mean over rows of the fraction of tokens before the first disagreement. Random weights
    give near-tied logits, so float rounding may fork a row early; 1.0 means identical."""
    differs_bn = a_bn != b_bn
    first_bn = np.where(differs_bn.any(axis=1), differs_bn.argmax(axis=1), a_bn.shape[1])
    return float(np.mean(first_bn / a_bn.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--decode-segments", type=int, default=4,
        help="decode loops of growing attended cache length (sampling.decode_segments)",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=0.0,
        help="0: greedy (tokens compared with HF's); > 0: sampled, the RL loop's path",
    )  # fmt: skip
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument(
        "--hf", choices=("auto", "on", "off"), default="auto",
        help="compare with HF transformers generate (auto: on CPU only)",
    )  # fmt: skip
    args = parser.parse_args()
    common.check_positive(
        batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
        repeats=args.repeats, decode_segments=args.decode_segments,
    )  # fmt: skip
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise SystemExit("error: need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    cfg = common.model_config(args)
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    if p + n > cfg.max_position:
        raise SystemExit(f"error: prompt + new tokens = {p + n} > max_position {cfg.max_position}")
    run_hf = args.hf == "on" or (args.hf == "auto" and common.platform_name() == "cpu")

    threads = common.restrict_cpus(args.cpus)
    print(f"{common.device_description()}; {cfg.num_params() / 1e6:.1f}M parameters")
    limits = common.device_limits(cfg.dtype, args.peak_dim, args.bandwidth_mb)
    model = create_model(cfg, seed=0)
    tokens_bt, positions_bt = random_prompts(cfg, b, p)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    prefill, decode, generate = zero_rl_fns(
        model, tokens_bt, positions_bt, n, args.decode_segments, **sampling
    )
    prefill_s = common.time_call(prefill, repeats=args.repeats).median
    decode_s = common.time_call(decode, setup=prefill, repeats=args.repeats).median

    # Step i of the decode attends over p + i + 1 filled slots: on average p + (n + 1) / 2.
    decode_bytes = n * common.decode_bytes_per_step(cfg, b, p + (n + 1) / 2, cfg.compute_dtype)
    prefill_flops = common.forward_flops(cfg, body_tokens=b * p, logit_tokens=b)
    results = {
        "num_params": cfg.num_params(),
        "batch": b,
        "prompt_len": p,
        "new_tokens": n,
        **limits,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "prefill_tokens_per_s": b * p / prefill_s,
        "decode_tokens_per_s": b * n / decode_s,
        "decode_bytes_per_s": decode_bytes / decode_s,
        "decode_roofline_fraction": decode_bytes / limits["bandwidth_bytes_per_s"] / decode_s,
        "prefill_flops_per_s": prefill_flops / prefill_s,
        "prefill_roofline_fraction": prefill_flops / limits["peak_flops"] / prefill_s,
    }
    rows = [
        ("parameters", cfg.num_params() / 1e6, "M"),
        ("measured peak", limits["peak_flops"] / 1e9, f"GFLOP/s ({cfg.dtype} matmul)"),
        ("measured bandwidth", limits["bandwidth_bytes_per_s"] / 1e9, "GB/s"),
        ("prefill", results["prefill_tokens_per_s"], f"tokens/s ({b} x {p})"),
        ("prefill roofline fraction", results["prefill_roofline_fraction"], "of matmul peak"),
        ("decode", results["decode_tokens_per_s"], f"tokens/s ({b} rows x {n})"),
        ("decode roofline fraction", results["decode_roofline_fraction"], "of bandwidth"),
    ]
    if run_hf:
        hf_generate = hf_generate_fn(model, tokens_bt, threads, **sampling)
        hf_generate(2)  # torch has nothing to compile; one short call settles lazy set-up
        outputs = {}

        def keep(name, fn):
            outputs[name] = fn()
            return outputs[name]

        t = common.time_interleaved(
            {
                "generate": lambda: keep("ours", generate),
                "hf_generate": lambda: keep("hf", lambda: hf_generate(n)),
            },
            warmup=0,
            repeats=args.repeats,
        )
        results |= {
            "generate_s": t["generate"].median,
            "hf_generate_s": t["hf_generate"].median,
            "torch_threads": threads,
            "generate_speedup_vs_hf": t["hf_generate"].median / t["generate"].median,
        }
        rows += [
            ("generate, zero_rl", t["generate"].median, "s"),
            ("generate, HF", t["hf_generate"].median, f"s (torch, {threads} threads)"),
            ("speed-up vs HF generate", results["generate_speedup_vs_hf"], "x (goal >= 1.5)"),
        ]
        if args.temperature == 0:  # sampled tokens differ between the two random streams
            agreement = greedy_agreement(np.asarray(outputs["ours"]), outputs["hf"])
            results["greedy_agreement_with_hf"] = agreement
            rows.append(("greedy agreement with HF", agreement, "of tokens"))
    mode = "greedy" if args.temperature == 0 else (
        f"sampled: temperature {args.temperature}, top-p {args.top_p}, top-k {args.top_k}"
    )  # fmt: skip
    common.print_table(f"zero_rl.sampler, {cfg.dtype}, {mode}, median of {args.repeats}", rows)
    common.write_json(args.out, results, args)


if __name__ == "__main__":
    main()
