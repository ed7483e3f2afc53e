"""Prompt templates: exact rendered strings and SimpleRL-Zoo's per-family defaults."""

import pytest

from zero_rl.data import TEMPLATES, apply_template, default_template, get_template

QUESTION = "What is $1+1$?"


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "qwen_boxed",
            "<|im_start|>system\nPlease reason step by step, and put your final answer within "
            "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is $1+1$?<|im_end|>\n"
            "<|im_start|>assistant\n",
        ),
        ("abel", "Question:\nWhat is $1+1$?\nAnswer:\nLet's think step by step.\n"),
        (
            "r1_zero",
            "A conversation between User and Assistant. The user asks a question, and the "
            "Assistant solves it. The assistant first thinks about the reasoning process in the "
            "mind and then provides the user with the answer. The reasoning process and answer "
            "are enclosed within <think> </think> and <answer> </answer> tags, respectively, "
            "i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
            "User: What is $1+1$?. Assistant:",
        ),
        ("plain", "What is $1+1$?"),
    ],
)
def test_rendered_prompts(name, expected):
    assert apply_template(name, QUESTION) == expected


def test_every_template_is_tested_and_hyphen_alias():
    assert set(TEMPLATES) == {"qwen_boxed", "abel", "r1_zero", "plain"}
    assert apply_template("qwen-boxed", QUESTION) == apply_template("qwen_boxed", QUESTION)
    assert get_template("r1-zero").stop_strings == ("</answer>",)


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown template 'chatml'.*'abel'.*'qwen_boxed'"):
        apply_template("chatml", QUESTION)


@pytest.mark.parametrize(
    "model, template",
    [
        ("Qwen2.5-Math-7B", "qwen_boxed"),
        ("Qwen/Qwen2.5-7B", "qwen_boxed"),
        ("Qwen2.5-32B", "qwen_boxed"),
        ("Qwen2.5-0.5B", "abel"),
        ("Qwen-2.5-1.5B", "abel"),
        ("qwen2_5_1_5b", "abel"),
        ("Llama-3.1-8B", "abel"),
        ("mistralai/Mistral-7B-v0.1", "abel"),
        ("Mistral-Small-24B-Base-2501", "qwen_boxed"),
        ("deepseek-math-7b-base", "abel"),
        ("tiny", "plain"),
        # The model presets' names.
        ("llama3.1-8b", "abel"),
        ("mistral-7b", "abel"),
        ("qwen2.5-1.5b", "abel"),
        ("qwen2.5-7b", "qwen_boxed"),
        ("qwen2.5-math-7b", "qwen_boxed"),
        ("mistral-small-24b", "qwen_boxed"),
    ],
)
def test_default_template_per_family(model, template):
    assert default_template(model) == template


def test_default_template_unknown_family():
    with pytest.raises(ValueError, match="no default template for model 'gpt2'"):
        default_template("gpt2")
