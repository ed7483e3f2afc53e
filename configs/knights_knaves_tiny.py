"""Knights and Knaves (Logic-RL's task) on the tiny CPU model: which of three islanders tell
the truth.

The tiny config's recipe (configs/tiny.py) on a logic task, sized for its model: three
islanders whose statements are about one person or two joined by "or". Stage 1 is SFT on a
teacher that reads "or" as "and" in 70% of the puzzles (and answers the misread puzzle when it
has one solution); stage 2 is zero RL with GRPO and the puzzle verifier, which checks the stated
roles against the puzzle's one solution.

    python launch/train.py --config=configs/knights_knaves_tiny.py --workdir=/tmp/zero-rl-kk
"""

import os

from zero_rl.config import load_config, tiny_task_tokenizer

# The default run's config, which this one changes.
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config():
    c = load_config(TINY)
    c.tokenizer.path = tiny_task_tokenizer("knights_knaves")
    c.data.train = c.data.eval = "knights_knaves"
    c.data.tasks.knights_knaves.update(
        dict(min_people=3, max_people=3, connectives="or", train_size=3000, eval_size=200,
             prompt_style="short")
    )  # fmt: skip
    c.sampling.max_prompt_len = 64
    c.sampling.max_new_tokens = 16
    c.sft.steps = 800
    c.sft.checkpoint_every = 800
    c.sft.seq_len = 96
    c.sft.carry_error_rate = 0.7
    return c
