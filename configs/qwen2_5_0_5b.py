"""SimpleRL-Zoo zero RL on qwen2.5-0.5b (see zero_rl.config.simplerl_zoo_config).

    python launch/train.py --config=configs/qwen2_5_0_5b.py --workdir=$WORKDIR \
        --config.model.hf_path=$HF_MODEL_DIR --config.data.train=$MATH_TRAIN_JSONL

`c.mesh` is the planned slice's (`hardware`); on other hardware set --config.mesh.fsdp and
--config.mesh.tensor, and check the layout with `python launch/plan.py --config=... --slice=...`.
"""

from zero_rl.config import simplerl_zoo_config


def get_config():
    c = simplerl_zoo_config(
        "qwen2.5-0.5b",
        max_response_len=8192,
        hardware="v5p-32 mesh fsdp=16; planned peak 64 of 95 GB per chip",
    )
    c.mesh.fsdp = 16
    return c
