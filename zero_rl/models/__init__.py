"""Decoder-only transformers (Llama-3, Mistral, Qwen2.5, DeepSeek-Math) and HF checkpoint I/O.

Shape suffixes: an array's name ends in one letter per axis, in order, so `logits_btv` is
[batch, time, vocab] and `pos_b1` is [batch, 1]. This is the one list of the letters; the
model (`layers`, `transformer`), the sampler and the decode engine all read it.

  b  batch rows                          t  time: a sequence's tokens (the queries)
  s  keys (cache slots when decoding)    v  vocabulary
  d  embed (the model width)             f  MLP hidden (`mlp_dim`)
  n  query heads                         k  kv heads
  g  query heads per kv head (the group: n = k * g, query head i * g + j reads kv head i)
  h  head_dim                            a  rotary angles (head_dim // 2 of them)
  l  layers
  c  positions in one chunk              m  the chunks (the axis a chunked loop maps over)
  1, 2  an axis of that size

The sampling code (`zero_rl.sampler`, `zero_rl.sampling`), where no array has a head axis,
gives a few letters a meaning of its own:

  n  response tokens (`max_new_tokens`)  p  prompts
  g  samples per prompt (a GRPO group)   r  response rows (prompts x samples) of an output
  s  the engine's pool slots, one response each (its batch axis)
  j  the response rows of one engine prefill (its prompts x samples)
  q  states of the stop-string automaton (`zero_rl.sampling.stops`)
"""

from zero_rl.models.config import (
    ARCHITECTURE_FIELDS,
    PRESETS,
    ModelConfig,
    RopeScaling,
    config_mismatches,
    get_preset,
)
from zero_rl.models.hf import from_hf, to_hf
from zero_rl.models.hf_config import config_from_hf, hf_config, read_config_json
from zero_rl.models.params import abstract_params, create_model, logical_axes, param_shardings
from zero_rl.models.transformer import (
    DecodeCache,
    Transformer,
    apply,
    logprobs_from_hidden,
    positions_from_mask,
    token_logprobs,
)

__all__ = [
    "ARCHITECTURE_FIELDS",
    "PRESETS",
    "DecodeCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_params",
    "apply",
    "config_from_hf",
    "config_mismatches",
    "create_model",
    "from_hf",
    "get_preset",
    "hf_config",
    "logical_axes",
    "logprobs_from_hidden",
    "param_shardings",
    "positions_from_mask",
    "read_config_json",
    "to_hf",
    "token_logprobs",
]
