"""Knights and Knaves: statement logic, the solver, the answer reader, the verifier and the
generator with its teacher."""

import itertools

import pytest

from zero_rl.data import Example
from zero_rl.tasks import KnightsKnavesTask
from zero_rl.tasks.knights_knaves import (
    check,
    format_answer,
    read_assignment,
    render,
    solutions,
    truth,
)

A_KNIGHT, A_KNAVE = ["is", 0, True], ["is", 0, False]
B_KNIGHT, B_KNAVE = ["is", 1, True], ["is", 1, False]
TINY = dict(min_people=2, max_people=3, train_size=300, eval_size=50, prompt_style="short")


@pytest.mark.parametrize(
    "kind, table",  # truth over (a, b) = (TT, TF, FT, FF)
    [("and", (1, 0, 0, 0)), ("or", (1, 1, 1, 0)), ("iff", (1, 0, 0, 1)),
     ("implies", (1, 0, 1, 1))],
)  # fmt: skip
def test_connectives(kind, table):
    # a = "A is a knight", b = "B is a knight"; the assignment sets both.
    got = [truth([kind, A_KNIGHT, B_KNIGHT], (a, b)) for a, b in itertools.product((1, 0), (1, 0))]
    assert got == [bool(t) for t in table]


def test_negation_and_atoms():
    assert truth(["not", A_KNAVE], (True, False))
    assert not truth(A_KNAVE, (True, False))
    assert truth(B_KNAVE, (True, False))


@pytest.mark.parametrize(
    "statements, expected",
    [
        # A: "B is a knave." B: "A and I are knights." If B were a knight, A would be a knight
        # and so B a knave; hence B is a knave, B's claim is false, A's is true.
        ([B_KNAVE, ["and", A_KNIGHT, B_KNIGHT]], [(True, False)]),
        # A: "We are both knaves." (B says "A is a knight"): A cannot be a knight; as a knave
        # A lies, so B is a knight, whose claim about A is then false - no solution.
        ([["and", A_KNAVE, B_KNAVE], A_KNIGHT], []),
        # A: "We are both knaves." B: "A is a knave.": A knave, B knight.
        ([["and", A_KNAVE, B_KNAVE], A_KNAVE], [(False, True)]),
        # A: "I am a knight." B: "A is a knight.": both knights or both knaves.
        ([A_KNIGHT, A_KNIGHT], [(True, True), (False, False)]),
        # A: "B is a knight or I am a knave." -> A knight and B knight (B: "A is a knight").
        ([["or", B_KNIGHT, A_KNAVE], A_KNIGHT], [(True, True)]),
    ],
)
def test_solutions_hand_solved(statements, expected):
    assert solutions(statements) == expected


def test_render():
    names = ["Zoey", "Oliver"]
    assert render(["implies", A_KNIGHT, ["is", 1, False]], names) == (
        "if Zoey is a knight then Oliver is a knave"
    )
    assert render(["not", B_KNIGHT], names) == "it is false that Oliver is a knight"
    assert render(["iff", A_KNAVE, B_KNIGHT], names) == (
        "Zoey is a knave if and only if Oliver is a knight"
    )
    assert format_answer([True, False], ["A", "B"]) == "A knight, B knave"


@pytest.mark.parametrize(
    "answer, names, assignment, reason",
    [
        ("A knight, B knave", "AB", {"A": True, "B": False}, ""),
        ("B knave, A knight", "AB", {"A": True, "B": False}, ""),
        ("A is a knight and B is a knave.", "AB", {"A": True, "B": False}, ""),
        ("A: knight; B: knave", "AB", {"A": True, "B": False}, ""),
        ("(1) Zoey is a knight\n(2) Oliver is a knave", ["Zoey", "Oliver"],
         {"Zoey": True, "Oliver": False}, ""),
        ("So a knight is Zoey... Zoey is a Knight, Oliver is a KNAVE", ["Zoey", "Oliver"],
         {"Zoey": True, "Oliver": False}, ""),
        ("A knight", "AB", {"A": True}, "incomplete"),
        ("A knight, B knave, A knave", "AB", None, "contradictory"),
        ("A knight, B knave, C knight", "AB", None, "unknown_person"),
        ("A knights B knaves", "AB", {"A": True, "B": False}, ""),
        ("nobody knows", "AB", {}, "incomplete"),
    ],
)  # fmt: skip
def test_read_assignment(answer, names, assignment, reason):
    got, got_reason = read_assignment(answer, list(names))
    assert got_reason == reason
    if assignment is not None:
        assert got == assignment


def _example():
    return KnightsKnavesTask(prompt_style="short").example(
        [B_KNAVE, ["and", A_KNIGHT, B_KNIGHT]], ["A", "B"], [True, False]
    )


@pytest.mark.parametrize(
    "response, correct, reason",
    [
        ("\\boxed{A knight, B knave}", True, ""),
        ("<think>B cannot be a knight</think> <answer>(1) A is a knight (2) B is a knave</answer>",
         True, ""),
        ("\\boxed{A knave, B knave}", False, "wrong_assignment"),
        ("\\boxed{A knight}", False, "incomplete"),
        ("\\boxed{A knight, B knave, A knave}", False, "contradictory"),
        ("\\boxed{A knight, B knave, Q knight}", False, "unknown_person"),
        ("A knight, B knave", False, "no_answer"),
        ("\\boxed{A knight, B kn", False, "no_answer"),
    ],
)  # fmt: skip
def test_check(response, correct, reason):
    result = check(response, _example())
    assert (result.correct, result.reason) == (correct, reason)


@pytest.mark.parametrize(
    "meta",
    [{}, {"statements": [B_KNAVE], "names": ["A", "B"], "solution": [True, False]},
     {"statements": "x", "names": ["A"], "solution": [True]}],
)  # fmt: skip
def test_malformed_example_is_a_counted_zero(meta):
    example = Example("knights_knaves/x", "?", "A knight", "knights_knaves", meta=meta)
    assert check("\\boxed{A knight}", example).reason == "malformed_example"
    with pytest.raises(ValueError, match="not a Knights and Knaves puzzle"):
        KnightsKnavesTask().sft_pairs([example], error_rate=0.0, seed=0)


def test_generator_keeps_unique_solutions_only():
    task = KnightsKnavesTask(**TINY)
    train, held_out = task.split("train"), task.split("eval")
    assert (len(train), len(held_out)) == (300, 50)
    assert not {ex.id for ex in train} & {ex.id for ex in held_out}
    assert [ex.id for ex in train] == [ex.id for ex in KnightsKnavesTask(**TINY).split("train")]
    for ex in train + held_out:
        statements, names = ex.meta["statements"], ex.meta["names"]
        assert 2 <= len(names) <= 3 and names == list("ABC"[: len(names)])
        assert solutions(statements) == [tuple(ex.meta["solution"])]
        assert check(f"\\boxed{{{ex.answer}}}", ex).correct
        assert ex.prompt.endswith("\n") and ex.prompt.count(" says ") == len(names)


def test_instruction_prompt_follows_logic_rl():
    task = KnightsKnavesTask(train_size=20, eval_size=5)
    ex = task.split("eval")[0]
    names = ex.meta["names"]
    assert 3 <= len(names) <= 7
    assert ex.prompt.startswith("A very special island is inhabited only by knights and knaves.")
    assert f"You meet {len(names)} inhabitants: " in ex.prompt
    assert ex.prompt.endswith("So who is a knight and who is a knave?")
    logic_rl_answer = " ".join(
        f"({i + 1}) {n} is a {'knight' if k else 'knave'}"
        for i, (n, k) in enumerate(zip(names, ex.meta["solution"]))
    )
    assert check(f"<answer>{logic_rl_answer}</answer>", ex).correct


def test_teacher_misreads_or_at_its_error_rate():
    task = KnightsKnavesTask(**TINY)
    train = task.split("train")
    exact = task.sft_pairs(train, error_rate=0.0, seed=0)
    assert all(check(response, ex).correct for (_, response), ex in zip(exact, train))
    slipped = task.sft_pairs(train, error_rate=1.0, seed=0)
    wrong = [ex for (_, r), ex in zip(slipped, train) if not check(r, ex).correct]
    assert wrong, "the misreading changes some answers"
    assert all("or(" in ex.id for ex in wrong)  # only puzzles with an "or" statement


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(min_people=1), "min_people"),
        (dict(max_people=9), "max_people"),
        (dict(connectives="and,xor"), "connectives"),
        (dict(prompt_style="long"), "prompt_style"),
        (dict(min_people=2, max_people=2, train_size=5000), "distinct puzzles"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        KnightsKnavesTask(**settings).split("train")
