"""Stop strings: the Aho-Corasick stop table against brute force, `token_texts` of real
tokenizers, `finish_responses`' definition of a finished response, and stops inside both decode
loops."""

import zlib

import numpy as np
import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from zero_rl.models import ModelConfig, create_model
from zero_rl.sampling import (
    SamplingOptions,
    build_stop_table,
    finish_responses,
    generate,
    stop_table,
)
from zero_rl.sampling.stops import match_state
from zero_rl.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece

ANSWER = "</answer>"
TINY_MODEL = "zero_rl/assets/tiny_addition.model"


def _run(table_qv: np.ndarray, tokens_nl: np.ndarray) -> np.ndarray:
    """States [N, L] after each token of each row, read from state 0."""
    state_n = np.zeros(tokens_nl.shape[0], np.int64)
    out = []
    for t in range(tokens_nl.shape[1]):
        state_n = table_qv[state_n, tokens_nl[:, t]]
        out.append(state_n)
    return np.stack(out, axis=1)


def _first(flags) -> int | None:
    """1-based index of the first True (the number of tokens up to it), None if none."""
    return next((k + 1 for k, f in enumerate(flags) if f), None)


# ---------------------------------------------------------------------------------------------
# build_stop_table on a hand-made vocabulary, against brute force.

# Every character of the patterns is also a one-character token, so any string over them has a
# spelling; multi-character tokens hold whole patterns ("</answer>", "x</answer>y", "abb"),
# pattern pieces ("</ans", "wer>") and pieces spanning a pattern's end ("swer></", "answer>a").
HAND_VOCAB = (
    *("", "a", "b", "x", " ", "<", "/", ">", "n", "s", "w", "e", "r", "é"),
    *("ab", "ba", "bab", "abab", "aab", "bb", "abb", "</", "ans", "answer", "wer", "wer>"),
    *("r>", "er>", "</answer>", "x</answer>y", "swer></", "answer>a", "</ans", "nswer", "r>a"),
)
PATTERN_SETS = [
    ("</answer>", "abab", "bb", "er>"),  # "er>" is a suffix of "</answer>"
    ("</answer>",),
    ("abab", "bab", "ab"),  # nested: each holds the next
    ("baab", "aa"),  # "aa" ends inside "baab": found through a failure link
    ("nswer>a", "</answer>", "r>a", "é</"),
    ("answer", "answer", "x"),  # a duplicate
]


def _spell(rng: np.random.Generator, text: str, vocab=HAND_VOCAB, empty=None) -> list[int]:
    """A random spelling of `text` in `vocab`'s tokens, with `empty` ids sprinkled in."""
    ids, i = [], 0
    while i < len(text):
        fits = [v for v, t in enumerate(vocab) if t and text.startswith(t, i)]
        v = fits[rng.integers(len(fits))]
        ids.append(v)
        i += len(vocab[v])
        if empty is not None and rng.random() < 0.1:
            ids.append(empty)
    return ids


def _random_sequences(rng, patterns, count: int, length: int) -> np.ndarray:
    """Half uniform over the vocabulary, half spellings of texts made of patterns, their
    prefixes and suffixes (near misses) and single characters."""
    chars = sorted({c for p in patterns for c in p} | {"a", "b", "x", ">"})
    rows = []
    for n in range(count):
        if n % 2:
            rows.append(rng.integers(len(HAND_VOCAB), size=length))
            continue
        ids = []
        while len(ids) < length:
            p = patterns[rng.integers(len(patterns))]
            cut = int(rng.integers(len(p) + 1))
            piece = [p, p[:cut], p[cut:], chars[rng.integers(len(chars))]][rng.integers(4)]
            ids += _spell(rng, piece, empty=HAND_VOCAB.index(""))
        rows.append(ids[:length])
    return np.asarray(rows, np.int64)


def _longest_partial(text: str, patterns) -> str:
    """The longest suffix of `text` that is a proper prefix of a pattern: what an automaton
    state must remember."""
    for start in range(len(text) + 1):
        suffix = text[start:]
        if any(p.startswith(suffix) and p != suffix for p in patterns):
            return suffix
    raise AssertionError("unreachable: the empty suffix is a prefix of every pattern")


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids="|".join)
def test_stop_table_equals_brute_force_on_random_sequences(patterns):
    rng = np.random.default_rng(zlib.crc32("|".join(patterns).encode()))
    table = build_stop_table(HAND_VOCAB, patterns)
    match = match_state(table)
    assert table.shape == (match + 1, len(HAND_VOCAB)) and table.dtype == np.int32
    tokens_nl = _random_sequences(rng, patterns, count=2000, length=14)
    states_nl = _run(table, tokens_nl)
    meaning: dict[int, str] = {0: ""}  # state -> the partial match it stands for
    triggers: set[str] = set()
    matched = spanning = misses = 0
    for ids, states in zip(tokens_nl.tolist(), states_nl.tolist()):
        text, found = "", False
        for k, (v, q) in enumerate(zip(ids, states)):
            before, text = text, text + HAND_VOCAB[v]
            has = any(p in text for p in patterns)
            assert (q == match) == has, (k, [HAND_VOCAB[i] for i in ids[: k + 1]], q)
            if has and not found:
                found = True
                matched += 1
                triggers |= {p for p in patterns if p in text}
                spanning += not any(p in HAND_VOCAB[v] for p in patterns)
                assert not any(p in before for p in patterns)
            misses += not has
            if not has:  # one state per partial match, and one partial match per state
                partial = _longest_partial(text, patterns)
                assert meaning.setdefault(q, partial) == partial, (q, meaning[q], text)
    assert len(set(meaning.values())) == len(meaning)
    # The cases exercise the table: matches and misses, every pattern, spellings over tokens.
    assert matched > 0.05 * len(tokens_nl) and misses > 0.1 * tokens_nl.size
    assert triggers == set(patterns)
    assert spanning > 20


def test_match_is_absorbing_and_no_patterns_never_match():
    table = build_stop_table(HAND_VOCAB, ("</answer>", "bb"))
    match = match_state(table)
    assert match == table.shape[0] - 1
    assert (table[match] == match).all()
    assert table.min() >= 0 and table.max() <= match
    tokens_nl = np.random.default_rng(0).integers(len(HAND_VOCAB), size=(500, 12))
    for patterns in [(), ("",)]:
        none = build_stop_table(HAND_VOCAB, patterns)
        assert none.shape == (1, len(HAND_VOCAB)) and not none.any()
        assert match_state(none) == -1
        assert (_run(none, tokens_nl) == 0).all()
    # A pattern with a character no token has is never produced.
    unseen = build_stop_table(HAND_VOCAB, ("zz", "a\nb"))
    assert not (_run(unseen, tokens_nl) == match_state(unseen)).any()


def test_stop_table_hand_computed():
    """vocab a, b, ab, x, aab, "" and the one pattern "aab": the states are "", "a", "aa" and
    MATCH; each entry is the longest suffix of (state + token) that is a prefix of "aab"."""
    vocab = ["a", "b", "ab", "x", "aab", ""]
    table = build_stop_table(vocab, ["aab"])
    match = match_state(table)
    s0 = 0
    s_a = int(table[s0, vocab.index("a")])
    s_aa = int(table[s_a, vocab.index("a")])
    assert len({s0, s_a, s_aa, match}) == 4
    expected = {  # state: its row, in vocab order  a, b, ab, x, aab, ""
        s0: [s_a, s0, s0, s0, match, s0],  # "ab": no prefix of "aab" at its end
        s_a: [s_aa, s0, match, s0, match, s_a],  # "a" + "ab" = "aab"
        s_aa: [s_aa, match, match, s0, match, s_aa],  # "aa" + "a" = "aaa", still "aa"
        match: [match] * 6,
    }
    for state, row in expected.items():
        np.testing.assert_array_equal(table[state], row, err_msg=f"state {state}")


# ---------------------------------------------------------------------------------------------
# Real tokenizers: token_texts and stop_table.

CORPUS = [
    "<think> 12 + 35 = 47 </think> <answer> 47 </answer>",
    "The answer is 47.</answer>. answers and swerves </ans wer> r>",
    "Natalia sold 48 clips in April and half as many in May.\nQuestion: how many?",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;!?+-*/=<>(){}[]\\_'\"",
] * 4
WORDS = (
    *("The", " answer", " is", " 47", "</", "answer", ">", " <answer>", "</think>", " 12"),
    *(" +", "r>", "wer", "  ", "\n", "x", " </ans", "wer>", "</answe", "<answer>", "."),
)
SPECIAL_HF = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _hf_tokenizer(path, kind: str) -> Tokenizer:
    if kind == "bytelevel":  # GPT-2 / Qwen style
        rust = RustTokenizer(models.BPE())
        rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        rust.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Llama / Mistral style: "▁" for spaces, one prepended
        rust = RustTokenizer(models.BPE(unk_token="<unk>"))
        rust.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        rust.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = []
    specials = [*SPECIAL_HF, "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=specials,
                                  initial_alphabet=alphabet)  # fmt: skip
    rust.train_from_iterator(CORPUS, trainer=trainer)
    rust.save(str(path))
    return load_tokenizer(path, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Tokenizer]:
    d = tmp_path_factory.mktemp("stop_toks")
    return {
        # "</answer>" spelled in several pieces; "</answer>" a single user-defined piece.
        "sp": train_sentencepiece(
            CORPUS,
            vocab_size=420,
            model_prefix=d / "sp",
            user_defined_symbols=("<think>", "</think>"),
        ),
        "sp_answer_symbol": train_sentencepiece(CORPUS, vocab_size=420, model_prefix=d / "spa"),
        "hf_bytelevel": _hf_tokenizer(d / "bytelevel.json", "bytelevel"),
        "hf_metaspace": _hf_tokenizer(d / "metaspace.json", "metaspace"),
        "tiny_addition": load_tokenizer(TINY_MODEL),
    }


def _special_ids(name: str, tok: Tokenizer) -> set[int]:
    if name.startswith("hf"):
        return {tok.token_to_id(t) for t in SPECIAL_HF}
    return {tok.bos_id, tok.eos_id, tok.pad_id}


def _random_text(rng: np.random.Generator, words=WORDS, count: int | None = None) -> str:
    count = int(rng.integers(1, 12)) if count is None else count
    return "".join(words[i] for i in rng.integers(len(words), size=count))


@pytest.mark.parametrize(
    "name", ["sp", "sp_answer_symbol", "hf_bytelevel", "hf_metaspace", "tiny_addition"]
)
def test_token_texts_concatenate_to_the_decode(toks, name):
    tok = toks[name]
    texts = tok.token_texts()
    assert len(texts) == tok.vocab_size
    special = _special_ids(name, tok)
    assert all(texts[i] == "" for i in special)
    rng = np.random.default_rng(1)
    if name == "tiny_addition":  # its vocabulary: no byte fallback, few characters
        words = ("What", " is", " 12", " +", " 35", "?", "\n", "=", "47", "\\boxed{", "}", " ")
    else:
        words = WORDS + ("Natalia", " sold", " clips", "\t", "Q", "(x)", "{}")
    for _ in range(200):
        text = _random_text(rng, words)
        ids = tok.encode(text)
        assert ids, text
        decoded = tok.decode(ids)
        assert decoded == tok.decode(ids[:1]) + "".join(texts[i] for i in ids[1:]), text
    # Any ids (what a model samples), not only encodings, special ids among them. A byte piece
    # of a multi-byte character ("\ufffd" alone) only decodes in context: left out.
    plain = [i for i, t in enumerate(texts) if t and t.isascii()]
    assert len(plain) > 100 or name == "tiny_addition"
    pool = np.asarray(plain + sorted(special) * 3)
    for _ in range(200):
        ids = rng.choice(pool, size=int(rng.integers(1, 10))).tolist()
        assert tok.decode(ids) == tok.decode(ids[:1]) + "".join(texts[i] for i in ids[1:]), ids


@pytest.mark.parametrize("name", ["sp", "sp_answer_symbol", "hf_bytelevel", "hf_metaspace"])
def test_stop_table_of_a_tokenizer_stops_where_the_decode_first_holds_the_string(toks, name):
    tok = toks[name]
    pad = 13
    table = stop_table(tok, (ANSWER,), tok.vocab_size + pad)
    assert table.shape[1] == tok.vocab_size + pad
    assert stop_table(tok, (ANSWER,), tok.vocab_size + pad) is table  # cached
    assert not table.flags.writeable
    match = match_state(table)
    texts = tok.token_texts()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    spelled_in_pieces = 0
    for n in range(300):
        text = _random_text(rng)
        if n % 3:  # two of three hold the stop string at a random character position
            at = int(rng.integers(len(text) + 1))
            text = text[:at] + ANSWER + text[at:] + _random_text(rng)
        ids = tok.encode(text)
        states = _run(table, np.asarray([ids]))[0]
        expected = _first(ANSWER in tok.decode(ids[:k]) for k in range(1, len(ids) + 1))
        assert _first(states == match) == expected, (text, ids)
        assert (expected is not None) == (ANSWER in tok.decode(ids))
        if expected is not None:
            spelled_in_pieces += ANSWER not in texts[ids[expected - 1]]
        # Padding ids (rows of the model's embedding past the tokenizer's) change nothing.
        at = rng.integers(len(ids) + 1, size=3)
        padded = np.insert(np.asarray(ids), at, tok.vocab_size + 2)
        padded_states = _run(table, padded[None])[0]
        np.testing.assert_array_equal(padded_states[padded < tok.vocab_size], states)
    if name != "sp_answer_symbol":
        assert spelled_in_pieces > 50
    # Random ids, as a model would sample them: random spellings of the stop string and of
    # near misses (a prefix of it, then something else), special ids among them.
    ascii_texts = [t if t.isascii() else "" for t in texts]
    special = sorted(_special_ids(name, tok))
    hits = 0
    for _ in range(300):
        ids = []
        while len(ids) < 12:
            piece = ANSWER[: int(rng.integers(1, len(ANSWER) + 1))] + " x"[rng.integers(2)]
            ids += _spell(rng, piece, ascii_texts, empty=special[rng.integers(len(special))])
        states = _run(table, np.asarray([ids]))[0]
        expected = _first(ANSWER in tok.decode(ids[:k]) for k in range(1, len(ids) + 1))
        assert _first(states == match) == expected, [texts[i] for i in ids]
        hits += expected is not None
    assert 30 < hits < 270


# ---------------------------------------------------------------------------------------------
# finish_responses: the one definition of a finished response.


class ListTokenizer(Tokenizer):
    """Ids index a fixed list of texts; <pad> and <eos> are special (dropped when decoding)."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.vocab_size = len(self.pieces)
        self._ids = {p: i for i, p in enumerate(self.pieces)}
        self._special = {self._ids["<pad>"], self._ids["<eos>"]}
        self.add_bos_default = False
        self._finish_init(None, self._ids["<eos>"], self._ids["<pad>"], ())

    def token_to_id(self, token):
        return self._ids.get(token)

    def _encode_batch(self, texts):  # greedy longest match; enough for token_texts' anchor
        out = []
        for text in texts:
            ids, i = [], 0
            while i < len(text):
                best = max((p for p in self.pieces if text.startswith(p, i)), key=len)
                ids.append(self._ids[best])
                i += len(best)
            out.append(ids)
        return out

    def _decode(self, ids, skip_special):
        return "".join(self.pieces[i] for i in ids if not (skip_special and i in self._special))


LIST_TOK = ListTokenizer(
    ["<pad>", "<eos>", "a", "x", " ", "y", "</", "ans", "wer", ">", "</answer>", "STOP",
     "r>z", "</answe", "\n", "wer>"]
)  # fmt: skip
STOPS = (ANSWER, "STOP")

# (case, pieces, given length, device's stop flag, stop strings, text, length, stopped)
# fmt: off
FINISH_CASES = [
    ("no stop string", ["x", " ", "y", "a"], 4, False, STOPS, "x ya", 4, False),
    ("no stop strings given", ["x", "</answer>", "y"], 3, False, (), "x</answer>y", 3, False),
    ("stop token only", ["x", "y", "<eos>"], 3, True, STOPS, "xy", 3, True),
    ("answer then text to the cap", ["a", "</answer>", "x", "y", "x", "y"], 6, False, STOPS,
     "a</answer>", 2, True),
    ("spelled over four tokens", ["x", "</", "ans", "wer", ">", "y", "y"], 7, False, STOPS,
     "x</answer>", 5, True),
    ("spelled over two tokens", ["</answe", "r>z", "y"], 3, False, STOPS, "</answer>", 2, True),
    ("completed by the last token", ["x", "</", "ans", "wer>"], 4, False, STOPS,
     "x</answer>", 4, True),
    ("completed by the device's last token", ["x", "</", "ans", "wer>"], 4, True, STOPS,
     "x</answer>", 4, True),
    ("earliest of two wins", ["x", "STOP", "</answer>", "y"], 4, False, STOPS, "xSTOP", 2, True),
    ("earliest of two wins, listed last", ["x", "</answer>", "STOP"], 3, False, STOPS,
     "x</answer>", 2, True),
    ("bisection: far before the length", ["</answer>", *["x", "y"] * 7], 15, False, STOPS,
     "</answer>", 1, True),
    ("bisection: mid response", [*["x"] * 5, "</", "ans", "wer", ">", *["y"] * 8], 17, False,
     STOPS, "xxxxx</answer>", 9, True),
    ("bisection: before a stop token", ["x", "</answer>", "y", "y", "<eos>"], 5, True, STOPS,
     "x</answer>", 2, True),
    ("only past the length", ["x", "y", "</answer>"], 2, False, STOPS, "xy", 2, False),
    ("special ids inside the spelling", ["</", "<pad>", "ans", "wer", "<pad>", ">", "y"], 7,
     False, STOPS, "</answer>", 6, True),
    ("empty response", [], 0, False, STOPS, "", 0, False),
]
# fmt: on


def _rows(cases, width=20):
    tokens_bn = np.full((len(cases), width), LIST_TOK.pad_id, np.int32)
    for b, pieces in enumerate(cases):
        tokens_bn[b, : len(pieces)] = [LIST_TOK.token_to_id(p) for p in pieces]
    return tokens_bn


@pytest.mark.parametrize(
    "pieces, length, was_stopped, stops, text, final_length, stopped",
    [c[1:] for c in FINISH_CASES],
    ids=[c[0] for c in FINISH_CASES],
)
def test_finish_responses(pieces, length, was_stopped, stops, text, final_length, stopped):
    out = finish_responses(LIST_TOK, _rows([pieces]), np.asarray([length]),
                           np.asarray([was_stopped]), stops)  # fmt: skip
    assert out.texts == [text]
    assert out.lengths.tolist() == [final_length]
    assert out.stopped.tolist() == [stopped]
    assert out.finish_reasons() == ["stop" if stopped else "length"]
    if stops and stopped and not was_stopped:  # the fewest tokens: one fewer has no stop string
        ids = [LIST_TOK.token_to_id(p) for p in pieces[:final_length]]
        assert any(s in LIST_TOK.decode(ids) for s in stops)
        assert not any(s in LIST_TOK.decode(ids[:-1]) for s in stops)


def test_finish_responses_rows_are_independent():
    rows = [c for c in FINISH_CASES if c[4] == STOPS]
    out = finish_responses(
        LIST_TOK,
        _rows([c[1] for c in rows]),
        np.asarray([c[2] for c in rows]),
        np.asarray([c[3] for c in rows]),
        STOPS,
    )
    assert out.texts == [c[5] for c in rows]
    assert out.lengths.tolist() == [c[6] for c in rows]
    assert out.stopped.tolist() == [c[7] for c in rows]


@pytest.mark.parametrize("name", ["sp", "sp_answer_symbol", "hf_bytelevel"])
def test_answer_then_running_to_the_cap_is_stopped(toks, name):
    """The issue's case: an r1_zero response that closes </answer> and then rambles until its
    length cap is stopped, not truncated, cut after </answer>, with its length up to the token
    that completed it."""
    tok = toks[name]
    head = "<think> 12 + 35 = 47 </think> <answer> 47 "
    text = head + ANSWER + " The answer is 47. And then more and more and more"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    k = _first(ANSWER in tok.decode(ids[:k]) for k in range(1, len(ids) + 1))
    assert k < len(ids) - 5
    tokens_bn = np.asarray([ids + [tok.pad_id] * 4])
    out = finish_responses(tok, tokens_bn, np.asarray([len(ids)]), np.asarray([False]), (ANSWER,))
    assert out.texts == [head + ANSWER]
    assert out.lengths.tolist() == [k]
    assert out.stopped.tolist() == [True]
    assert out.finish_reasons() == ["stop"]


# ---------------------------------------------------------------------------------------------
# Stops inside the compiled decode loops.

MODEL_CFG = ModelConfig(vocab_size=64, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64)  # fmt: skip
QUESTIONS = ["What is 12 + 35?", "1+2=", "What is 7 + 8?", "99 + 1 = ", "\\boxed{4}"]
MAX_NEW = 20


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer(TINY_MODEL)


@pytest.fixture(scope="module")
def tiny_model(tiny_tok):
    """A random model whose vocabulary (64) is larger than the tokenizer's (48); the extra
    rows' logits are 0, below the max of 48 random logits, so greedy never picks them."""
    model = create_model(MODEL_CFG, seed=0)
    head = np.array(model.lm_head[...])
    head[:, tiny_tok.vocab_size :] = 0
    model.lm_head[...] = head * 4  # sharper logits: less repetitive greedy responses
    return model


def _pick_stop_string(tok: Tokenizer, row: list[int]) -> tuple[str, int]:
    """Text of a few tokens in the middle of `row`, whose first appearance in the response
    ends exactly at its last token, and that last token's index (1-based)."""
    for width in (3, 2, 4):
        for start in range(3, len(row) - width - 2):
            end = start + width
            head, full = tok.decode(row[:start]), tok.decode(row[:end])
            assert full.startswith(head)
            s = full[len(head) :]
            if len(s) >= 2 and _first(s in tok.decode(row[:k]) for k in range(1, end + 1)) == end:
                return s, end
    raise AssertionError(f"no stop string candidate in {row}")


@pytest.mark.parametrize("engine, slots", [("continuous", 0), ("continuous", 2), ("static", 0)])
def test_stop_string_ends_the_row_in_the_decode_loop(tiny_model, tiny_tok, engine, slots):
    """Greedy once without stop strings, then with a stop string taken from the first
    response: each row ends at its first token whose prefix text holds it (stopped, padded
    after), other rows run on; finish_responses agrees with the device's lengths. With 2
    slots for 5 prompts, slots are refilled, so a slot's automaton state must restart."""
    tok = tiny_tok
    prompts = [tok.encode(q, add_bos=True) for q in QUESTIONS]
    options = SamplingOptions(max_prompt_len=16, max_new_tokens=MAX_NEW, temperature=0,
                              engine=engine, slots=slots)  # fmt: skip
    free = generate(tiny_model, prompts, options, tokenizer=tok).output
    free_tokens = np.asarray(free.tokens_bn)
    assert np.asarray(free.lengths_b).tolist() == [MAX_NEW] * len(prompts)
    assert free_tokens.max() < tok.vocab_size  # no padding ids: every response decodes
    stop, end = _pick_stop_string(tok, free_tokens[0].tolist())
    out = generate(tiny_model, prompts, options.replace(stop_strings=(stop,)), tokenizer=tok)
    tokens_bn, lengths_b, stopped_b = (
        np.asarray(x) for x in (out.output.tokens_bn, out.output.lengths_b, out.output.stopped_b)
    )
    expected_stopped = 0
    for b, row in enumerate(free_tokens.tolist()):
        k = _first(stop in tok.decode(row[:k]) for k in range(1, MAX_NEW + 1))
        expected = MAX_NEW if k is None else k
        assert lengths_b[b] == expected, (b, stop, tok.decode(row))
        assert bool(stopped_b[b]) == (k is not None)
        np.testing.assert_array_equal(tokens_bn[b, :expected], row[:expected])
        assert (tokens_bn[b, expected:] == tok.pad_id).all()
        expected_stopped += k is not None
    assert lengths_b[0] == end < MAX_NEW
    assert expected_stopped < len(prompts)  # some rows run to the cap

    fin = finish_responses(tok, tokens_bn, lengths_b, stopped_b, (stop,))
    np.testing.assert_array_equal(fin.lengths, lengths_b)
    np.testing.assert_array_equal(fin.stopped, stopped_b)
    # The same from the stop-free responses cut only at the cap: the host finds the same ends.
    again = finish_responses(tok, free_tokens, np.asarray(free.lengths_b),
                             np.asarray(free.stopped_b), (stop,))  # fmt: skip
    np.testing.assert_array_equal(again.lengths, lengths_b)
    np.testing.assert_array_equal(again.stopped, stopped_b)
    assert again.texts == fin.texts
    for b, text in enumerate(fin.texts):
        if stopped_b[b]:
            assert text.endswith(stop) and text.count(stop) == 1


def test_ids_past_the_tokenizer_vocabulary_add_no_text():
    """A model whose embedding is padded past its tokenizer (Qwen2.5's 152,064 rows for
    151,665 ids) can sample such an id: it adds no text instead of failing the decode."""
    tok = load_tokenizer(TINY_MODEL)
    ids = tok.encode("1+2=")
    padded = [ids[0], tok.vocab_size + 3, *ids[1:], tok.vocab_size]
    tokens = np.asarray([padded + [tok.pad_id] * 4])
    got = finish_responses(tok, tokens, np.asarray([len(padded)]), np.asarray([False]), ("=",))
    assert got.texts == [tok.decode(ids)]
    assert got.lengths.tolist() == [len(padded) - 1] and got.stopped.tolist() == [True]
