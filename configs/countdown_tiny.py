"""Countdown (TinyZero's task) on the tiny CPU model: reach a target with three numbers.

The tiny config's recipe (configs/tiny.py) on another task, sized for its model: three numbers
up to 9, + - *, and problems whose worked solution combines them left to right (any order
verifies). Stage 1 is SFT on a teacher that works each problem out step by step but, in 70% of
them, answers with its last step instead of the whole expression ("3+5=8, 8*7=56,
\\boxed{8*7}"); stage 2 is zero RL with GRPO and the Countdown verifier (an exact parser, never
`eval`), which pays only for expressions that use each given number once and reach the target.

    python launch/train.py --config=configs/countdown_tiny.py --workdir=/tmp/zero-rl-countdown
"""

import os

from zero_rl.config import load_config, tiny_task_tokenizer

# The default run's config, which this one changes.
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config():
    c = load_config(TINY)
    c.tokenizer.path = tiny_task_tokenizer("countdown")
    c.data.train = c.data.eval = "countdown"
    c.data.tasks.countdown.update(
        dict(min_numbers=3, max_numbers=3, max_number=9, max_target=99, operations="+-*",
             in_order=True, train_size=1500, eval_size=200, prompt_style="short")
    )  # fmt: skip
    c.sampling.max_prompt_len = 16
    c.sampling.max_new_tokens = 32  # the teacher's longest response is 27 tokens
    c.sft.steps = 800
    c.sft.checkpoint_every = 800
    c.sft.seq_len = 64
    c.sft.carry_error_rate = 0.7
    return c
