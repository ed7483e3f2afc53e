"""SimpleRL-Zoo zero RL on mistral-small-24b (see zero_rl.train.config.simplerl_zoo_config).

    python launch/train.py --config=configs/mistral_small_24b.py --workdir=$WORKDIR \
        --config.model.hf_path=$HF_MODEL_DIR --config.data.train=$MATH_TRAIN_JSONL
"""

from zero_rl.train.config import simplerl_zoo_config


def get_config():
    return simplerl_zoo_config(
        "mistral-small-24b",
        max_response_len=8192,
        hardware="v5p-512 mesh fsdp=64,tensor=4; planned peak 54 of 95 GB per chip",
    )
