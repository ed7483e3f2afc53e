"""`SamplingOptions`: how responses are drawn, one frozen value shared by every caller (the RL
collector, in-training evaluation, `launch/eval.py`, pass-rate filtering, the notebooks)."""

from __future__ import annotations

import dataclasses

ENGINES = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Attributes:
    max_prompt_len: prompt tokens a row may hold (the prompt region of the KV cache); a
      longer prompt is an error naming this option.
    max_new_tokens: the response cap (the response region of the cache). A call may give
      each prompt a smaller budget of its own (`row_max_new_tokens`).
    temperature: 0 is greedy. top_k (0 = off) and top_p (1 = off) truncate before drawing.
    stop_token_ids: ids that end a response (kept in it, as its last token).
    stop_strings: texts that end a response as soon as they appear in its decoded text, in
      whatever tokens the model spells them (matched inside the decode loop); the text is
      then cut after the first one.
    engine: "continuous" (a pool of `slots` rows; a row whose response ends is refilled
      with the next waiting prompt inside the compiled loop) or "static" (every row of a call
      decodes until the call's longest response ends; kept for comparison, see bench/).
    slots: rows of the continuous engine's KV cache (0: one per response of the call, i.e.
      no refilling); a multiple of the batch-parallel devices and at least the samples per
      prompt, since a prompt's samples start together from one shared prefill.
    prefill_prompts: prompts prefilled together when slots free up (continuous engine).
    drain_phases: continuous engine: once no prompt waits, each time at most half the pool
      is live the live rows move to a pool half as large, up to this many times (each is one
      more decode loop to compile; 0 = off).
    prompts_per_call: static engine only: prompts per sampler call (0 = all).
    decode_segments: the response cache in this many chunks. Continuous engine: a step
      reads only the chunks some live response has reached. Static: decode loops of growing
      attended length. Either way no output changes.
    cache_dtype: KV cache dtype (default: the model's compute dtype).
    """

    max_prompt_len: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    engine: str = "continuous"
    slots: int = 0
    prefill_prompts: int = 1
    drain_phases: int = 3
    prompts_per_call: int = 0
    decode_segments: int = 1
    cache_dtype: str | None = None

    def __post_init__(self):
        # Lists from configs or JSON become tuples: the options must stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(str(s) for s in self.stop_strings))
        for name in ("max_prompt_len", "max_new_tokens", "prefill_prompts", "decode_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampling option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("slots", "prompts_per_call", "top_k", "drain_phases"):
            if getattr(self, name) < 0:
                raise ValueError(f"sampling option {name} must be >= 0, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"sampling option temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling option top_p must be in (0, 1], got {self.top_p}")
        if self.engine not in ENGINES:
            raise ValueError(f"sampling option engine={self.engine!r}; choose one of {ENGINES}")
        if "" in self.stop_strings:
            raise ValueError("sampling option stop_strings holds an empty string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> SamplingOptions:
        return dataclasses.replace(self, **changes)
