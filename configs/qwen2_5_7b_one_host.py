"""Qwen2.5-7B zero RL at 8K-token responses on one host: a v5p-8 (4 chips) or 8 GPUs of 80 GB.

SimpleRL-Zoo's recipe (configs/qwen2_5_7b.py) with three memory settings that change no
result: attention in 512-query chunks (no [heads, 9216, 9216] score blocks), the sampler taking
32 prompts (256 rows of KV cache) per call, and gradient accumulation over 8-row microbatches.
Policy, reference and Adam state are fully sharded over the host's devices.

    python launch/plan.py --config=configs/qwen2_5_7b_one_host.py          # the v5p-8
    python launch/plan.py --config=configs/qwen2_5_7b_one_host.py --mesh=fsdp=8 \\
        --device_memory_gb=80                                              # 8 x 80 GB GPUs
    python launch/train.py --config=configs/qwen2_5_7b_one_host.py --workdir=$WORKDIR \\
        --config.model.hf_path=$HF_MODEL_DIR --config.data.train=$MATH_TRAIN_JSONL
"""

from zero_rl.config import simplerl_zoo_config


def get_config():
    c = simplerl_zoo_config(
        "qwen2.5-7b",
        max_response_len=8192,
        hardware="v5p-8 mesh fsdp=4; planned peak 82 of 95 GB per chip (8 x 80 GB GPUs: 46)",
    )
    c.mesh.fsdp = -1  # every device of the host
    c.model.attention = "chunked"
    c.model.attention_chunk = 512
    c.sampling.prompts_per_call = 32  # the static engine's (the continuous one: 256 slots)
    c.rl.microbatch_size = 8
    return c
