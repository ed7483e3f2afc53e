"""Supervised fine-tuning of a base model on (prompt, response) pairs.

    python launch/sft.py --workdir=/tmp/sft_tiny          # configs/sft_tiny.py, the default
    python launch/sft.py --config=configs/sft_tiny.py --workdir=... \
        --config.model.hf_path=/ckpt/qwen2.5-0.5b --config.tokenizer=/ckpt/qwen2.5-0.5b \
        --config.data.source=traces.jsonl --config.data.template=qwen_boxed \
        --config.sft.seq_len=8192 --config.model.max_position=32768
    python launch/sft.py --workdir=... --config.data.source=limo.jsonl --config.data.format=limo

data.format maps each record to (prompt, response): "fields" (the default) reads
data.prompt_field / data.response_field; "openr1_math", "light_r1", "limo", "s1k" and "am" read
the fields of OpenR1-Math-220k, Light-R1-SFTData, LIMO, s1K / s1K-1.1 and
AM-DeepSeek-R1-Distilled (see `zero_rl.data.sft_formats`). The template applies to the prompt.

Writes TensorBoard scalars to WORKDIR/tb, checkpoints to WORKDIR/sft_checkpoints (a rerun
resumes there) and, with export_hf, the fine-tuned model and its tokenizer to WORKDIR/hf.
Config files start from `zero_rl.config.sft_run_config()`, which lists every key.
"""

import os
import shutil
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from zero_rl.config import exit_on_bad_command_line, validate_sft
from zero_rl.data.synthetic import SOURCE as SYNTHETIC_SOURCE
from zero_rl.data.synthetic import AdditionTask, sft_pairs
from zero_rl.data.templates import apply_template
from zero_rl.models import ModelConfig, Transformer, create_model, from_hf, to_hf
from zero_rl.sharding import make_mesh
from zero_rl.tokenizer import Tokenizer, load_tokenizer
from zero_rl.train.sft import read_sft_pairs, train_sft

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "sft_tiny.py")
if __name__ == "__main__":
    exit_on_bad_command_line(sys.argv[1:], _DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "SFT config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")

_MODEL_DIMS = (
    "vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
)  # fmt: skip
# Copied next to the exported weights so the directory loads with `load_tokenizer` alone.
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def load_model(model_cfg, mesh) -> Transformer:
    overrides = {
        k: model_cfg[k] for k in ("rope_theta", "max_position") if model_cfg[k] is not None
    }
    overrides |= {"dtype": model_cfg.dtype, "param_dtype": model_cfg.param_dtype}
    overrides["remat"] = model_cfg.remat
    if model_cfg.hf_path:
        return from_hf(model_cfg.hf_path, mesh=mesh, **overrides)
    cfg = ModelConfig(**{k: model_cfg[k] for k in _MODEL_DIMS}, **overrides)
    return create_model(cfg, model_cfg.init_seed, mesh=mesh)


def load_pairs(data_cfg, seed: int) -> list[tuple[str, str]]:
    if data_cfg.source == SYNTHETIC_SOURCE:
        examples = AdditionTask().split("train")[: data_cfg.limit]
        pairs = sft_pairs(examples, carry_error_rate=data_cfg.carry_error_rate, seed=seed)
    else:
        read = read_sft_pairs(
            data_cfg.source,
            prompt_field=data_cfg.prompt_field,
            response_field=data_cfg.response_field,
            format=data_cfg.format,
            limit=data_cfg.limit,
            on_error=data_cfg.on_error,
        )
        if read.num_skipped:
            print(f"skipped {read.num_skipped} bad records of {data_cfg.source}, first: "
                  f"{read.skipped[0]}")  # fmt: skip
        pairs = read.pairs
    return [(apply_template(data_cfg.template, prompt), response) for prompt, response in pairs]


def export(model: Transformer, tokenizer: Tokenizer, directory: str, dtype: str) -> None:
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
           "pad_token_id": tokenizer.pad_id}  # fmt: skip
    extra = {k: v for k, v in ids.items() if v is not None}
    to_hf(model, directory, dtype=dtype, overwrite=True, extra_config=extra)
    if jax.process_index() == 0:
        source = tokenizer.path
        shutil.copy(source, os.path.join(directory, "tokenizer" + source.suffix))
        for name in _TOKENIZER_FILES:
            if (source.parent / name).is_file():
                shutil.copy(source.parent / name, os.path.join(directory, name))


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    config = _CONFIG.value
    try:
        validate_sft(config)
    except (KeyError, ValueError) as err:
        sys.exit(f"error: {err.args[0]}")
    mesh = make_mesh(dict(config.mesh))
    tokenizer = load_tokenizer(config.tokenizer)
    model = load_model(config.model, mesh)
    pairs = load_pairs(config.data, config.sft.seed)
    print(
        f"model {model.cfg}\ntokenizer {tokenizer}\ntemplate={config.data.template}\n"
        f"{len(pairs)} pairs, first: {pairs[0]!r}"
    )
    model = train_sft(
        config.sft, model=model, tokenizer=tokenizer, pairs=pairs, workdir=_WORKDIR.value, mesh=mesh
    )
    if config.export_hf:
        directory = os.path.join(_WORKDIR.value, "hf")
        export(model, tokenizer, directory, config.export_dtype)
        print(f"exported to {directory}")


if __name__ == "__main__":
    app.run(main)
