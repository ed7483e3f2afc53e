"""SimpleRL-Zoo zero RL on qwen2.5-32b (see zero_rl.config.simplerl_zoo_config).

    python launch/train.py --config=configs/qwen2_5_32b.py --workdir=$WORKDIR \
        --config.model.hf_path=$HF_MODEL_DIR --config.data.train=$MATH_TRAIN_JSONL

`c.mesh` is the planned slice's (`hardware`); on other hardware set --config.mesh.fsdp and
--config.mesh.tensor, and check the layout with `python launch/plan.py --config=... --slice=...`.
"""

from zero_rl.config import simplerl_zoo_config


def get_config():
    c = simplerl_zoo_config(
        "qwen2.5-32b",
        max_response_len=8192,
        hardware="v5p-512 mesh fsdp=64,tensor=4; planned peak 84 of 95 GB per chip",
    )
    # The microbatch of 64 rows splits over fsdp (at most 64 ways); tensor takes the rest.
    c.mesh.fsdp, c.mesh.tensor = 64, 4
    return c
