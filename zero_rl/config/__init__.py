"""The run config: its schema (`schema`), reading and checking it (`load`) and what it builds
(`build`). Everything below is imported from here: `from zero_rl import config as config_lib`."""

from zero_rl.config.build import (
    field_mapping,
    loss_config,
    model_config,
    reward_config,
    sampling_options,
    tokenizer_path,
)
from zero_rl.config.load import (
    check_command_line,
    check_keys,
    exit_on_bad_command_line,
    load_config,
    load_run_config,
    parse_value,
    rerun_differences,
    set_key,
    set_override,
    validate,
    validate_sft,
)
from zero_rl.config.schema import (
    TINY_TOKENIZER,
    TINY_VOCAB_SIZE,
    base_config,
    optimizer_config,
    sft_run_config,
    sft_stage_config,
    simplerl_zoo_config,
    tiny_task_tokenizer,
)

__all__ = [
    "TINY_TOKENIZER",
    "TINY_VOCAB_SIZE",
    "tiny_task_tokenizer",
    "base_config",
    "check_command_line",
    "check_keys",
    "exit_on_bad_command_line",
    "field_mapping",
    "load_config",
    "load_run_config",
    "loss_config",
    "model_config",
    "optimizer_config",
    "parse_value",
    "reward_config",
    "rerun_differences",
    "sampling_options",
    "set_key",
    "set_override",
    "sft_run_config",
    "sft_stage_config",
    "simplerl_zoo_config",
    "tokenizer_path",
    "validate",
    "validate_sft",
]
