"""(prompt, response) pairs from the records of public long-CoT SFT datasets, by field mapping.

`launch/sft.py --config.data.format=NAME` picks one; `get_converter(NAME)` returns a function
from one record (a dict) to a (prompt, response) pair, or to a string saying why the record
cannot be used, which the reader turns into a `file:line: reason` error or a counted skip.

| format        | dataset                                | prompt         | response            |
| ------------- | -------------------------------------- | -------------- | ------------------- |
| `fields`      | any (the default)                      | `prompt_field` | `response_field`    |
| `openr1_math` | open-r1/OpenR1-Math-220k               | `problem`      | verified generation |
| `light_r1`    | qihoo360/Light-R1-SFTData              | user turn      | assistant turn      |
| `limo`        | GAIR/LIMO                              | `question`     | `solution`          |
| `s1k`         | simplescaling/s1K, s1K-1.1             | `question`     | thinking + attempt  |
| `am`          | a-m-team/AM-DeepSeek-R1-Distilled-1.4M | user turn      | assistant turn      |

Per format:
- `openr1_math`: fields problem, solution, answer, generations (list of str),
  correctness_math_verify / correctness_llama / is_reasoning_complete (lists of bool, one per
  generation) and messages. The response is the first generation that Math-Verify accepted or,
  when it accepted none, the first the Llama judge accepted (per the card, Math-Verify verified
  most samples and the judge 12%); a generation marked incomplete never counts. A record whose
  generations all failed is left out with that reason, never trained on. Without correctness
  flags, the assistant turn of `messages` (the release puts a verified generation there) is the
  response. `solution` (NuminaMath's human solution) and `answer` are not used.
- `light_r1`: conversations of {"from", "value"}; roles "user" or "human", "assistant" or "gpt".
  The stage1-76k.json and stage2-3k.json files are JSON lists, which the reader takes as is.
- `limo`: fields question, solution, answer; the solution (the long reasoning, ending in its
  \\boxed{} answer) is the response verbatim; `answer` is not used.
- `s1k`: s1K-1.1's deepseek_thinking_trajectory + deepseek_attempt when the record has them,
  else s1K's thinking_trajectories (a list of str, joined by newlines) + attempt. The response
  (thinking and attempt stripped) is `<think>\\n{thinking}\\n</think>\\n\\n{attempt}`,
  DeepSeek-R1's own layout (s1's chat format marks the same split with `<|im_start|>think` /
  `<|im_start|>answer`). s1K-1.1's Gemini traces are not used.
- `am`: messages of {"role", "content", "info"}; the assistant content, which already holds
  `<think>...</think><answer>...</answer>`, is the response verbatim (the `info` copies of the
  two parts are not used). The release ships .jsonl.zst files: decompress them first.

Conversations (`light_r1`, `am`, `openr1_math`'s messages) must be one user turn and one
assistant reply, optionally after one leading system turn:
- A system turn is prepended to the user turn, separated by a blank line. The response was
  generated under it, so dropping it would train on a reply to a different prompt. The template
  (`data.template`) then wraps the combined text as the question; to keep the system text in a
  system slot of its own, render the prompts in a chat layout beforehand and use `plain`.
- A multi-turn conversation (more than one user or assistant turn) is rejected with its role
  sequence as the reason: these are single (prompt, response) documents, and flattening earlier
  turns into the prompt would invent a chat layout the template knows nothing of.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

Pair = tuple[str, str]
# A converter returns the pair, or the reason the record cannot be one.
Converter = Callable[[dict[str, Any]], Pair | str]

# Role names as the datasets spell them -> the turn they are. ShareGPT-style files (Light-R1)
# may say "human" / "gpt".
_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
          "gpt": "assistant"}  # fmt: skip


def _text(record: dict[str, Any], field: str) -> str | None:
    """`record[field]` when it is a string with some non-whitespace text, else None."""
    value = record.get(field)
    return value if isinstance(value, str) and value.strip() else None


def _missing(field: str) -> str:
    return f"field {field!r} is missing, empty or not a string"


def conversation_pair(turns: Any, *, field: str, role_key: str, content_key: str) -> Pair | str:
    """(prompt, response) of a single-turn conversation `[system?, user, assistant]`.

    A leading system turn is prepended to the user turn with a blank line between them; any
    other shape is a reason string naming `field` and the roles found.
    """
    if not isinstance(turns, list) or not turns:
        return f"field {field!r} is missing or not a non-empty list of turns"
    roles, texts = [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"{field}[{i}] is a {type(turn).__name__}, not an object"
        role, text = turn.get(role_key), turn.get(content_key)
        if role not in _ROLES:
            valid = ", ".join(map(repr, _ROLES))
            return f"{field}[{i}] has {role_key} {role!r}; expected one of {valid}"
        if not isinstance(text, str) or not text.strip():
            return f"{field}[{i}] ({role}) has no text in {content_key!r}"
        roles.append(_ROLES[role])
        texts.append(text)
    if roles.count("user") > 1 or roles.count("assistant") > 1:
        return (
            f"{field} is a multi-turn conversation ({', '.join(roles)}); only one user turn and "
            "one assistant reply make a (prompt, response) pair"
        )
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        return (
            f"{field} has turns ({', '.join(roles)}); expected an optional system turn, then one "
            "user turn and one assistant reply"
        )
    *prompt_parts, response = texts
    return "\n\n".join(prompt_parts), response


def from_fields(record: dict[str, Any], *, prompt_field: str, response_field: str) -> Pair | str:
    """Two string fields, taken verbatim (the `fields` format)."""
    for field in (prompt_field, response_field):
        if not isinstance(record.get(field), str) or not record[field]:
            return f"field {field!r} is missing or not a string"
    return record[prompt_field], record[response_field]


def _flags(record: dict[str, Any], field: str, count: int) -> list[bool] | str | None:
    """The per-generation booleans of `field`: None when absent, a reason when malformed."""
    flags = record.get(field)
    if flags is None:
        return None
    if not isinstance(flags, list):
        return f"field {field!r} is a {type(flags).__name__}, not a list of booleans"
    if len(flags) != count:
        return f"field {field!r} has {len(flags)} flags for {count} generations"
    return [flag is True for flag in flags]


_JUDGES = ("correctness_math_verify", "correctness_llama")


def openr1_math(record: dict[str, Any]) -> Pair | str:
    """OpenR1-Math-220k: the problem, and its first verified, complete generation."""
    generations = record.get("generations")
    if generations is None or all(record.get(judge) is None for judge in _JUDGES):
        return _openr1_from_messages(record)
    if not isinstance(generations, list):
        return f"field 'generations' is a {type(generations).__name__}, not a list"
    flags = {}
    for field in (*_JUDGES, "is_reasoning_complete"):
        value = _flags(record, field, len(generations))
        if isinstance(value, str):
            return value
        # An absent judge accepted nothing; absent completeness flags reject nothing.
        flags[field] = (
            value if value is not None else [field == "is_reasoning_complete"] * len(generations)
        )
    problem = _text(record, "problem")
    if problem is None:
        return _missing("problem")
    # Math-Verify first, a rule-based check; the card has the Llama judge label only 12% of
    # the samples, those Math-Verify did not verify.
    for judge in _JUDGES:
        for i, generation in enumerate(generations):
            usable = isinstance(generation, str) and generation.strip()
            if usable and flags[judge][i] and flags["is_reasoning_complete"][i]:
                return problem, generation
    return (
        f"no verified generation: none of the {len(generations)} generations is complete and "
        "marked correct by correctness_math_verify or correctness_llama"
    )


def _openr1_from_messages(record: dict[str, Any]) -> Pair | str:
    """The `messages` pair of an OpenR1 record without correctness flags; the prompt is
    `problem` when the record has one, as in the flagged path."""
    if record.get("messages") is None:
        return (
            "no correctness flags (correctness_math_verify, correctness_llama) to pick a "
            "verified generation, and no 'messages'"
        )
    pair = conversation_pair(record["messages"], field="messages", role_key="role",
                             content_key="content")  # fmt: skip
    if isinstance(pair, str):
        return pair
    problem = _text(record, "problem")
    return (problem if problem is not None else pair[0]), pair[1]


def light_r1(record: dict[str, Any]) -> Pair | str:
    """Light-R1-SFTData: a ShareGPT-style `conversations` list of {"from", "value"} turns."""
    return conversation_pair(
        record.get("conversations"), field="conversations", role_key="from", content_key="value"
    )


def limo(record: dict[str, Any]) -> Pair | str:
    """LIMO: the question and its long solution, verbatim."""
    for field in ("question", "solution"):
        if _text(record, field) is None:
            return _missing(field)
    return record["question"], record["solution"]


def _think(thinking: str, attempt: str) -> str:
    return f"<think>\n{thinking.strip()}\n</think>\n\n{attempt.strip()}"


def s1k(record: dict[str, Any]) -> Pair | str:
    """s1K / s1K-1.1: the thinking in <think>...</think>, then the attempt."""
    question = _text(record, "question")
    if question is None:
        return _missing("question")
    if "deepseek_thinking_trajectory" in record or "deepseek_attempt" in record:  # s1K-1.1
        for field in ("deepseek_thinking_trajectory", "deepseek_attempt"):
            if _text(record, field) is None:
                return _missing(field)
        return question, _think(record["deepseek_thinking_trajectory"], record["deepseek_attempt"])
    trajectories = record.get("thinking_trajectories")
    if (
        not isinstance(trajectories, list)
        or not all(isinstance(t, str) for t in trajectories)
        or not "".join(trajectories).strip()
    ):
        return (
            "no thinking: neither 'deepseek_thinking_trajectory' (s1K-1.1) nor a non-empty "
            "'thinking_trajectories' list of strings (s1K)"
        )
    if _text(record, "attempt") is None:
        return _missing("attempt")
    return question, _think("\n".join(trajectories), record["attempt"])


def am(record: dict[str, Any]) -> Pair | str:
    """AM-DeepSeek-R1-Distilled: `messages` of {"role", "content", "info"}, taken verbatim."""
    return conversation_pair(
        record.get("messages"), field="messages", role_key="role", content_key="content"
    )


# The dataset formats; `fields` (two named fields) is built by `get_converter`.
FORMATS: dict[str, Converter] = {
    "openr1_math": openr1_math,
    "light_r1": light_r1,
    "limo": limo,
    "s1k": s1k,
    "am": am,
}
FORMAT_NAMES: tuple[str, ...] = ("fields", *FORMATS)


def check_format(name: str) -> None:
    """Raises a ValueError listing the valid names when `name` is not a format."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown SFT data format {name!r}; valid: {', '.join(FORMAT_NAMES)}")


def get_converter(
    name: str, *, prompt_field: str = "prompt", response_field: str = "response"
) -> Converter:
    """The record -> (prompt, response) | reason function of format `name`. The field names
    are read by `fields` only: every other format knows its dataset's fields."""
    check_format(name)
    if name == "fields":
        return functools.partial(
            from_fields, prompt_field=prompt_field, response_field=response_field
        )
    return FORMATS[name]
