"""Tokenizer tests on a SentencePiece model and HF tokenizer.json files built on the fly."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from zero_rl.tokenizer import encode_prompts, load_tokenizer, train_sentencepiece

CORPUS = [
    "Natalia sold 48 clips in April and half as many in May.",
    "What is 12 + 35? The answer is 47.",
    "Let's think step by step. First, 7 * 8 = 56.",
    "<think> reasoning here </think> <answer> 42 </answer>",
    "Question:\nHow many apples?\nAnswer:\n",
] * 4
ROUND_TRIP = [
    "What is 12 + 35?",
    "  two leading spaces, two trailing  ",
    "line one\n\nline three\tand a tab",
    "unicode: é, ß, 😀, 東京",
    "<think>x</think><answer>7</answer>",
    "",
]
CHAT_SYMBOLS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    return train_sentencepiece(
        CORPUS, vocab_size=320, model_prefix=prefix, user_defined_symbols=CHAT_SYMBOLS
    )


def _train_hf_json(path, special_tokens):
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def qwen_like_dir(tmp_path_factory):
    """A Qwen-style directory: no BOS, EOS <|endoftext|> in the tokenizer, no pad."""
    d = tmp_path_factory.mktemp("qwen_like")
    rust = _train_hf_json(d / "tokenizer.json", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return d, rust


def test_sentencepiece_round_trip_is_exact(sp_tok):
    for text in ROUND_TRIP:
        assert sp_tok.decode(sp_tok.encode(text)) == text


def test_sentencepiece_ids_and_digit_split(sp_tok):
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 2, 3)
    assert sp_tok.vocab_size <= 320
    assert sp_tok.add_bos_default
    ids = sp_tok.encode("1234567890")
    assert len(ids) == 10  # one token per digit
    assert sp_tok.decode(ids) == "1234567890"
    assert len(sp_tok.encode("<|im_end|>")) == 1
    im_end = sp_tok.token_to_id("<|im_end|>")
    assert sp_tok.stop_token_ids[0] == 3 and im_end in sp_tok.stop_token_ids
    assert sp_tok.token_to_id("not-a-piece") is None


def test_sentencepiece_bos_eos_and_special_decoding(sp_tok):
    ids = sp_tok.encode("hi 5", add_bos=True, add_eos=True)
    assert ids[0] == 2 and ids[-1] == 3
    assert sp_tok.decode(ids) == "hi 5"
    assert sp_tok.decode(ids, skip_special=False) == "<s>hi 5</s>"
    assert sp_tok.decode(np.array(ids, dtype=np.int32)) == "hi 5"
    assert sp_tok.batch_encode(["a", "hi 5"])[1] == ids[1:-1]


def test_decode_rejects_ids_outside_vocab(sp_tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sp_tok.decode([5, sp_tok.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sp_tok.decode([-1])


def test_encode_rejects_bad_input(sp_tok, qwen_like_dir):
    with pytest.raises(TypeError, match="single str"):
        sp_tok.batch_encode("abc")
    with pytest.raises(TypeError, match="text 1 is int"):
        sp_tok.batch_encode(["a", 3])
    hf = load_tokenizer(qwen_like_dir[0])
    with pytest.raises(ValueError, match="no BOS"):
        hf.encode("a", add_bos=True)


def test_load_tokenizer_sentencepiece_paths(sp_tok, tmp_path):
    direct = load_tokenizer(sp_tok.path)
    assert direct.encode("12 apples") == sp_tok.encode("12 apples")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "tokenizer.model").write_bytes(sp_tok.path.read_bytes())
    in_dir = load_tokenizer(model_dir)
    assert in_dir.encode("12 apples") == sp_tok.encode("12 apples")
    assert (in_dir.bos_id, in_dir.eos_id, in_dir.pad_id) == (2, 3, 0)


def test_hf_round_trip_and_fallbacks(qwen_like_dir):
    d, rust = qwen_like_dir
    tok = load_tokenizer(d / "tokenizer.json")
    for text in ROUND_TRIP:
        assert tok.decode(tok.encode(text)) == text
    endoftext, im_end = rust.token_to_id("<|endoftext|>"), rust.token_to_id("<|im_end|>")
    assert tok.bos_id is None and not tok.add_bos_default
    assert tok.eos_id == endoftext
    assert tok.pad_id == endoftext  # no pad token: fall back to EOS
    assert set(tok.stop_token_ids) == {endoftext, im_end}
    assert tok.vocab_size == rust.get_vocab_size(with_added_tokens=True)
    chat = "<|im_start|>user\n2+2?<|im_end|>"
    ids = tok.encode(chat)
    assert ids[0] == rust.token_to_id("<|im_start|>") and ids[-1] == im_end
    assert tok.decode(ids) == "user\n2+2?"
    assert tok.decode(ids, skip_special=False) == chat


def test_hf_directory_configs(tmp_path):
    rust = _train_hf_json(tmp_path / "tokenizer.json", ["<|endoftext|>", "<|im_end|>"])
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    endoftext, im_end = rust.token_to_id("<|endoftext|>"), rust.token_to_id("<|im_end|>")
    # generation_config names a BOS id, but tokenizer_config's explicit null wins.
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": endoftext, "eos_token_id": [im_end, endoftext]})
    )
    tok = load_tokenizer(tmp_path)
    assert tok.bos_id is None
    assert (tok.eos_id, tok.pad_id) == (im_end, endoftext)
    assert tok.stop_token_ids == (im_end, endoftext)


def test_hf_llama_style_configs(tmp_path):
    rust = _train_hf_json(tmp_path / "tokenizer.json", ["<s>", "</s>", "<|eot_id|>"])
    bos, eos, eot = (rust.token_to_id(t) for t in ("<s>", "</s>", "<|eot_id|>"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>", "special": True}, "add_bos_token": True})
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eos, eos)
    assert tok.add_bos_default
    assert tok.stop_token_ids == (eos, eot)
    override = load_tokenizer(tmp_path, eos_token="<|eot_id|>", pad_token="<s>")
    assert (override.eos_id, override.pad_id) == (eot, bos)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="unknown tokenizer file type"):
        load_tokenizer(tmp_path / "vocab.txt")
    no_eos = tmp_path / "no_eos"
    no_eos.mkdir()
    _train_hf_json(no_eos / "tokenizer.json", ["<|im_start|>"])
    with pytest.raises(ValueError, match="eos_token="):
        load_tokenizer(no_eos / "tokenizer.json")
    with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
        load_tokenizer(no_eos / "tokenizer.json", eos_token="<nope>")
    (no_eos / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        load_tokenizer(no_eos)


def test_train_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="byte-fallback minimum"):
        train_sentencepiece(CORPUS, vocab_size=100, model_prefix=tmp_path / "m")
    with pytest.raises(ValueError, match="at least one non-empty text"):
        train_sentencepiece(["", ""], vocab_size=400, model_prefix=tmp_path / "m")


def test_encode_prompts_left_pads(sp_tok):
    prompts = ["What is 2 + 2?", "Hi", "<think> 1234 </think>"]
    rows = [sp_tok.encode(p, add_bos=True) for p in prompts]
    tokens_bt, lengths_b = encode_prompts(sp_tok, prompts, max_len=64, pad_to_multiple=8)
    longest = max(map(len, rows))
    width = -(-longest // 8) * 8
    expected = np.zeros((3, width), np.int32)  # pad id 0
    for b, ids in enumerate(rows):
        expected[b, width - len(ids) :] = ids
    assert tokens_bt.dtype == np.int32 and lengths_b.dtype == np.int32
    np.testing.assert_array_equal(tokens_bt, expected)
    np.testing.assert_array_equal(lengths_b, [len(r) for r in rows])


def test_encode_prompts_width_is_capped_at_max_len(sp_tok):
    n = len(sp_tok.encode("What is 2 + 2?", add_bos=True))
    tokens_bt, _ = encode_prompts(sp_tok, ["What is 2 + 2?"], max_len=n, pad_to_multiple=64)
    assert tokens_bt.shape == (1, n)


def test_encode_prompts_overflow(sp_tok):
    prompt = "1234567890 is a long number"
    ids = sp_tok.encode(prompt, add_bos=True)
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens, more than max_len=6"):
        encode_prompts(sp_tok, ["1", prompt], max_len=6)
    tokens_bt, lengths_b = encode_prompts(
        sp_tok, ["1", prompt], max_len=6, pad_to_multiple=1, overflow="truncate_left"
    )
    np.testing.assert_array_equal(tokens_bt[1], [ids[0], *ids[-5:]])  # BOS + last 5
    np.testing.assert_array_equal(lengths_b, [2, 6])
    with pytest.raises(ValueError, match="no prompts"):
        encode_prompts(sp_tok, [], max_len=6)
    with pytest.raises(ValueError, match="prompt 0 encodes to no tokens"):
        encode_prompts(sp_tok, [""], max_len=6, add_bos=False)
