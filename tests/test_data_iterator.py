"""PromptIterator: epoch shuffling, exact resume, multi-process split; prompt batch encoding."""

import json

import numpy as np
import pytest

from zero_rl.data import Example, PromptIterator, make_prompt_batch
from zero_rl.tokenizer import train_sentencepiece


def _examples(n):
    return [Example(f"q{i}", f"What is {i} + {i}?", str(2 * i), "toy") for i in range(n)]


def _ids(batch):
    return [ex.id for ex in batch]


def _take(it, k):
    return [_ids(next(it)) for _ in range(k)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    examples = _examples(12)
    it = PromptIterator(examples, batch_size=4, seed=0)
    epoch0 = sum(_take(it, 3), [])
    epoch1 = sum(_take(it, 3), [])
    assert sorted(epoch0) == sorted(epoch1) == sorted(ex.id for ex in examples)
    assert epoch0 != epoch1
    assert it.state_dict()["epoch"] == 1


def test_same_seed_same_stream_other_seed_differs():
    a = _take(PromptIterator(_examples(20), 5, seed=3), 10)
    b = _take(PromptIterator(_examples(20), 5, seed=3), 10)
    c = _take(PromptIterator(_examples(20), 5, seed=4), 10)
    assert a == b and a != c


def test_no_shuffle_is_in_order_and_remainder_dropped():
    it = PromptIterator(_examples(10), batch_size=4, seed=0, shuffle=False, num_epochs=2)
    assert it.batches_per_epoch == 2
    stream = [_ids(b) for b in it]
    assert stream == [["q0", "q1", "q2", "q3"], ["q4", "q5", "q6", "q7"]] * 2


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 9])
def test_resume_gives_the_uninterrupted_stream(stop_after):
    examples = _examples(13)  # 3 batches of 4 per epoch, one example dropped per epoch
    full = _take(PromptIterator(examples, 4, seed=7), 12)
    first = PromptIterator(examples, 4, seed=7)
    head = _take(first, stop_after)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = PromptIterator(examples, 4, seed=7)
    resumed.load_state_dict(state)
    assert head + _take(resumed, 12 - stop_after) == full


def test_processes_split_each_global_batch():
    examples = _examples(24)
    single = _take(PromptIterator(examples, 8, seed=1), 6)
    shards = [
        _take(PromptIterator(examples, 8, 1, process_index=p, process_count=4), 6) for p in range(4)
    ]
    for step in range(6):
        assert sum((shards[p][step] for p in range(4)), []) == single[step]
        assert all(len(shards[p][step]) == 2 for p in range(4))


def test_load_state_dict_refuses_other_data():
    state = PromptIterator(_examples(12), 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_examples=12 but this iterator has 16"):
        PromptIterator(_examples(16), 4, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0 but this iterator has 1"):
        PromptIterator(_examples(12), 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="invalid iterator position"):
        PromptIterator(_examples(12), 4, seed=0).load_state_dict({**state, "batch_in_epoch": 9})


def test_constructor_errors():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        PromptIterator(_examples(3), 4, seed=0)
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        PromptIterator(_examples(12), 4, seed=0, process_count=3)
    with pytest.raises(ValueError, match=r"process_index=2 not in \[0, 2\)"):
        PromptIterator(_examples(12), 4, seed=0, process_index=2, process_count=2)


def test_make_prompt_batch(tmp_path):
    examples = _examples(3)
    tok = train_sentencepiece(
        [ex.prompt for ex in examples] * 5 + ["Question:\nAnswer:\nLet's think step by step."],
        vocab_size=300,
        model_prefix=tmp_path / "tok",
    )
    batch = make_prompt_batch(examples, tok, template="abel", max_len=64, pad_to_multiple=16)
    width = batch.tokens_bt.shape[1]
    assert batch.tokens_bt.shape[0] == 3 and width % 16 == 0
    assert width - 16 < batch.lengths_b.max() <= width
    assert batch.answers == ["0", "2", "4"] and batch.examples == examples
    for b, ex in enumerate(examples):
        pad = width - batch.lengths_b[b]
        assert np.all(batch.tokens_bt[b, :pad] == tok.pad_id)
        assert batch.tokens_bt[b, pad] == tok.bos_id
        text = tok.decode(batch.tokens_bt[b, pad:])
        assert text == f"Question:\n{ex.prompt}\nAnswer:\nLet's think step by step.\n"
