"""The task layer: grading batches that mix tasks and math, the config's task settings, and the
runs' data and teacher for a task."""

import os

import pytest

from zero_rl.config import load_config, validate
from zero_rl.data import Example
from zero_rl.rewards import RewardConfig
from zero_rl.tasks import TASKS, CountdownTask, KnightsKnavesTask, grade, make_task, reason_counts
from zero_rl.train import loop
from zero_rl.train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTDOWN = CountdownTask().example([3, 5, 7], 56)
KNIGHTS = KnightsKnavesTask(prompt_style="short").example(
    [["is", 1, False], ["and", ["is", 0, True], ["is", 1, True]]], ["A", "B"], [True, False]
)
MATH = Example("math/1", "What is 6*7?", "42", "math500")


def test_grade_routes_each_row_to_its_verifier():
    texts = ["\\boxed{(3+5)*7}", "\\boxed{3+5*7}", "\\boxed{A knight, B knave}", "\\boxed{42}",
             "the answer is 42", "\\boxed{A knave, B knave}", "no answer here"]  # fmt: skip
    rows = [COUNTDOWN, COUNTDOWN, KNIGHTS, MATH, MATH, KNIGHTS, COUNTDOWN]
    verdicts = grade(texts, rows, config=RewardConfig(num_workers=1))
    assert [v.correct for v in verdicts] == [True, False, True, True, True, False, False]
    assert [v.reason for v in verdicts] == ["", "wrong_value", "", "", "", "wrong_assignment",
                                            "no_answer"]  # fmt: skip
    assert [v.boxed for v in verdicts] == [True, True, True, True, False, True, False]
    assert verdicts[0].extracted == "(3+5)*7" and verdicts[6].extracted is None
    assert reason_counts(verdicts) == {"wrong_value": 1, "wrong_assignment": 1, "no_answer": 1}


def test_task_verdicts_are_priced_like_math_ones():
    config = RewardConfig(mode="format_aware", num_workers=1)
    texts = ["\\boxed{(3+5)*7}", "\\boxed{8*7}", "(3+5)*7"]
    rewards = [v.reward for v in grade(texts, [COUNTDOWN] * 3, config=config)]
    assert rewards == [config.correct_boxed_reward, config.wrong_boxed_reward,
                       config.no_answer_reward]  # fmt: skip
    penalised = RewardConfig(format_penalty=0.25, num_workers=1)
    assert [v.reward for v in grade(texts, [COUNTDOWN] * 3, config=penalised)] == [1.0, 0.0, -0.25]


def test_grade_checks_lengths():
    with pytest.raises(ValueError, match="2 responses but 1 examples"):
        grade(["a", "b"], [COUNTDOWN], config=RewardConfig())


def test_make_task():
    assert make_task("countdown", {"max_number": 9}).max_number == 9
    with pytest.raises(ValueError, match="unknown task 'sudoku'.*countdown"):
        make_task("sudoku")
    with pytest.raises(TypeError):
        make_task("countdown", {"max_numbr": 9})


def test_every_task_names_its_reasons():
    for name, cls in TASKS.items():
        task = cls()
        assert task.name == name and "no_answer" in task.reasons
        assert "malformed_example" in task.reasons


@pytest.mark.parametrize("name", ["countdown_tiny", "knights_knaves_tiny"])
def test_task_configs_load_their_task(name):
    config = load_config(os.path.join(REPO, "configs", f"{name}.py"))
    validate(config)
    task = config.data.train
    train, held_out = run_lib.load_examples(config)
    assert {ex.source for ex in train + held_out} == {task}
    assert not {ex.id for ex in train} & {ex.id for ex in held_out}
    settings = config.data.tasks[task]
    assert (len(train), len(held_out)) == (settings.train_size, settings.eval_size)
    assert os.path.isfile(config.tokenizer.path)


def test_bad_task_settings_name_the_key():
    config = load_config(os.path.join(REPO, "configs", "countdown_tiny.py"),
                         ["data.tasks.countdown.operations=+^"])  # fmt: skip
    with pytest.raises(ValueError, match=r"config.data.tasks.countdown: operations"):
        validate(config)
    with pytest.raises(KeyError, match="unknown key 'max_numbr'.*max_number"):
        load_config(os.path.join(REPO, "configs", "countdown_tiny.py"),
                    ["data.tasks.countdown.max_numbr=3"])  # fmt: skip


@pytest.mark.parametrize("name", ["countdown_tiny", "knights_knaves_tiny"])
def test_the_sft_stage_uses_the_task_teacher(name):
    config = load_config(os.path.join(REPO, "configs", f"{name}.py"))
    train, _ = run_lib.load_examples(config)
    pairs = loop.teacher_pairs(config)
    assert [prompt for prompt, _ in pairs] == [ex.prompt for ex in train]
    task = make_task(config.data.train, config.data.tasks[config.data.train].to_dict())
    correct = [task.check(response, ex).correct for (_, response), ex in zip(pairs, train)]
    # The slip at sft.carry_error_rate=0.7, on (almost) every problem of the tiny configs.
    assert 0.25 < sum(correct) / len(correct) < 0.4


def test_the_sft_stage_refuses_data_without_a_teacher():
    config = load_config(os.path.join(REPO, "configs", "tiny.py"), ["data.train=math500"])
    with pytest.raises(ValueError, match="synthetic_addition and the generated tasks"):
        loop.teacher_pairs(config)


def test_a_task_is_an_eval_set_with_the_runs_settings():
    from zero_rl.eval import load_eval_set

    config = load_config(os.path.join(REPO, "configs", "countdown_tiny.py"))
    eval_set = load_eval_set("countdown", limit=5, task_settings=config.data.tasks.to_dict())
    _, held_out = run_lib.load_examples(config)
    assert [ex.id for ex in eval_set.examples] == [ex.id for ex in held_out[:5]]
    default = load_eval_set("knights_knaves", limit=2)  # Logic-RL's prompt without settings
    assert default.examples[0].prompt.startswith("A very special island")


def test_a_real_config_trains_on_a_task_without_math_levels():
    path = os.path.join(REPO, "configs", "qwen2_5_1_5b.py")
    task = ["data.train=countdown", "data.eval=countdown"]
    with pytest.raises(ValueError, match="selects MATH levels.*data.difficulty=''"):
        run_lib.load_examples(load_config(path, task))
    train, held_out = run_lib.load_examples(load_config(path, task + ["data.difficulty="]))
    assert (len(train), len(held_out)) == (10_000, 200)
    assert train[0].prompt.startswith("Using the numbers [")
