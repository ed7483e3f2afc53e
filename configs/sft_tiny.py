"""SFT of a tiny transformer on the synthetic addition task (CPU, under a minute on 2 cores).

    python launch/sft.py --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny
    python launch/sft.py --config=configs/sft_tiny.py --workdir=... --config.sft.steps=50

The teacher forgets the carry in half of the problems that need one, so the fine-tuned model is
an imperfect base model that zero RL can improve; set data.carry_error_rate=0 for a clean one.
"""

from ml_collections import ConfigDict

from zero_rl.config import optimizer_config, sft_run_config


def get_config() -> ConfigDict:
    config = sft_run_config()  # the tiny model and tokenizer, synthetic addition, plain template
    config.sft.steps = 300
    config.sft.batch_size = 8
    config.sft.seq_len = 128
    config.sft.log_every = 50
    config.sft.checkpoint_every = 140
    # At 300 steps: lr 7e-3 reaches ~0.01 nats/token; 1.5e-2 stalls near 0.1.
    config.sft.optim = optimizer_config(
        lr=7e-3, schedule="cosine", warmup_steps=10, end_lr_ratio=0.1, b2=0.98
    )
    return config
