"""SFT of a tiny transformer on the synthetic addition task (CPU, under a minute on 2 cores).

    python launch/sft.py --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny
    python launch/sft.py --config=configs/sft_tiny.py --workdir=... --config.sft.steps=50

The teacher forgets the carry in half of the problems that need one, so the fine-tuned model is
an imperfect base model that zero RL can improve; set data.carry_error_rate=0 for a clean one.
"""

from pathlib import Path

from ml_collections import ConfigDict, config_dict

import zero_rl
from zero_rl.train.config import optimizer_config

TINY_TOKENIZER = str(Path(zero_rl.__file__).parent / "assets" / "tiny_addition.model")


def get_config() -> ConfigDict:
    config = ConfigDict()

    # A random model with these dimensions, or an HF checkpoint when hf_path is set (then the
    # dimensions are ignored; rope_theta / max_position, if set, override the checkpoint's, e.g.
    # to fine-tune on traces longer than it was trained for).
    config.model = ConfigDict(
        dict(
            hf_path="",
            vocab_size=64,
            embed_dim=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            head_dim=16,
            mlp_dim=256,
            rope_theta=config_dict.placeholder(float),
            max_position=config_dict.placeholder(int),
            dtype="float32",
            param_dtype="float32",
            remat="none",
            init_seed=0,
        )
    )
    config.tokenizer = TINY_TOKENIZER

    # source: "synthetic_addition", or a .jsonl / .json / .parquet file of prompt/response records.
    config.data = ConfigDict(
        dict(
            source="synthetic_addition",
            prompt_field="prompt",
            response_field="response",
            template="plain",
            carry_error_rate=0.5,
            limit=config_dict.placeholder(int),
            # A record without both fields: "raise" names its file and line, "skip" leaves it
            # out and reports the count.
            on_error="raise",
        )
    )

    config.sft = ConfigDict(
        dict(
            steps=300,
            batch_size=8,
            seq_len=128,
            grad_accum=1,
            seed=0,
            log_every=50,
            checkpoint_every=140,
            overflow="error",
            logits_chunk=512,
            # At 300 steps: lr 7e-3 reaches ~0.01 nats/token; 1.5e-2 stalls near 0.1.
            optim=optimizer_config(
                lr=7e-3, schedule="cosine", warmup_steps=10, end_lr_ratio=0.1, b2=0.98
            ),
        )
    )
    config.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    config.export_hf = True
    config.export_dtype = "float32"  # "bfloat16" halves the files of a large model
    return config
