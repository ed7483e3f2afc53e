"""Prompt templates for zero RL, and SimpleRL-Zoo's choice of template per model family.

Every template is `prefix + question + suffix`, which keeps rendering trivial in Python and
in TensorFlow string ops (the seqio preprocessors) alike.

Sources: `qwen_boxed` and `abel` are the two prompts of SimpleRL-Zoo (Zeng et al., 2025,
arXiv:2503.18892), whose released training data comes in a "qwen" and an "abel" format
(hkust-nlp/SimpleRL-Zoo-Data). The qwen format puts the instruction in the system turn of the Qwen
chat layout; the maintainers posted it verbatim when asked for the training data
(github.com/hkust-nlp/simpleRL-reason, thread #10, quoted again in #87), and `qwen_boxed` renders
that string.
The abel format is the Abel prompt. `r1_zero` is Table 1 of the DeepSeek-R1 report
(arXiv:2501.12948).
The Qwen2.5-Math evaluation harness's own "qwen-boxed" differs from `qwen_boxed`: it keeps the
system turn "You are a helpful assistant." and appends the instruction to the question (its
"qwen25-math-cot" is the layout above).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

_BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt template.

    Attributes:
      name: registry name.
      prefix, suffix: text around the raw question.
      stop_strings: strings that end a response besides the tokenizer's stop tokens.
    """

    name: str
    prefix: str
    suffix: str
    stop_strings: tuple[str, ...] = ()

    def render(self, question: str) -> str:
        return f"{self.prefix}{question}{self.suffix}"


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "qwen_boxed",
            prefix=(f"<|im_start|>system\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>user\n"),
            suffix="<|im_end|>\n<|im_start|>assistant\n",
            stop_strings=("<|im_end|>",),
        ),
        Template("abel", prefix="Question:\n", suffix="\nAnswer:\nLet's think step by step.\n"),
        Template(
            "r1_zero",
            prefix=(
                "A conversation between User and Assistant. The user asks a question, and the "
                "Assistant solves it. The assistant first thinks about the reasoning process in "
                "the mind and then provides the user with the answer. The reasoning process and "
                "answer are enclosed within <think> </think> and <answer> </answer> tags, "
                "respectively, i.e., <think> reasoning process here </think> <answer> answer "
                "here </answer>. User: "
            ),
            suffix=". Assistant:",
            stop_strings=("</answer>",),
        ),
        # The question verbatim: tiny models trained from scratch on self-delimiting tasks.
        Template("plain", prefix="", suffix=""),
    )
}

# SimpleRL-Zoo trains the models with weak instruction following (Llama-3.1-8B, Mistral-7B,
# DeepSeek-Math-7B, Qwen2.5-0.5B/1.5B) with the simple Abel prompt; the rest (Qwen2.5-7B and up,
# Qwen2.5-Math-7B, Mistral-Small-24B) with the Qwen chat prompt (paper, Sec. 2). The maintainers
# point Qwen2.5-0.5B/1.5B and Llama-3.1-8B at the abel-format data (simpleRL-reason threads #61
# and #71). First match wins.
_FAMILY_DEFAULTS: tuple[tuple[str, str], ...] = (
    (r"tiny|toy", "plain"),
    (r"qwen[-_]?2[._]5[-_](0[._]5|1[._]5)b", "abel"),
    (r"qwen", "qwen_boxed"),
    (r"mistral[-_]?small", "qwen_boxed"),
    (r"mistral|llama|deepseek", "abel"),
)


def get_template(name: str) -> Template:
    """The template called `name` (hyphens and underscores are interchangeable)."""
    key = name.replace("-", "_")
    if key not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; valid names: {sorted(TEMPLATES)}")
    return TEMPLATES[key]


def apply_template(name: str, question: str) -> str:
    """Renders `question` with the template called `name`."""
    return get_template(name).render(question)


def default_template(model_name: str) -> str:
    """SimpleRL-Zoo's template for a model, e.g. "Qwen2.5-Math-7B" -> "qwen_boxed"."""
    lowered = model_name.lower()
    for pattern, template in _FAMILY_DEFAULTS:
        if re.search(pattern, lowered):
            return template
    raise ValueError(
        f"no default template for model {model_name!r}; choose one of {sorted(TEMPLATES)}"
    )


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """The tokenizer's stop ids plus the template's stop strings that are single tokens.

    A multi-token stop string cannot stop the sampler; evaluation cuts the text at it instead.
    """
    ids = list(tokenizer.stop_token_ids)
    for text in get_template(template).stop_strings:
        token = tokenizer.token_to_id(text)
        if token is not None and token not in ids:
            ids.append(token)
    return ids


def cut_at_stop_string(text: str, stop_strings: Sequence[str]) -> str | None:
    """`text` up to and including the first stop string, or None if it has none.

    A stop string that is not one token (r1_zero's "</answer>" in most vocabularies) cannot
    stop the sampler, so the response is cut here, as a serving engine's `stop=` would.
    """
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else None
