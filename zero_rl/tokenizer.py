"""One tokenizer interface over SentencePiece `.model` files and Hugging Face `tokenizer.json`.

The sampler and trainers only need ids in and text out, plus the ids that end a response
(`stop_token_ids`) and the id to pad with. Both backends keep special tokens written in the
text (``<|im_start|>``, ``<think>``) as single tokens, so chat templates render as plain strings.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Tokens that end an assistant turn or a document in the model families we load. Any of them that
# exists in a vocabulary joins `stop_token_ids`: a base model prompted with a chat template ends its
# answer with <|im_end|> even though its EOS is <|endoftext|>.
_STOP_TOKEN_CANDIDATES = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<｜end▁of▁sentence｜>",
)
# Used only for a bare tokenizer.json with no config files next to it.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<｜end▁of▁sentence｜>")
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<｜begin▁of▁sentence｜>")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class Tokenizer(abc.ABC):
    """Backend-independent tokenizer. Build one with `load_tokenizer`.

    Attributes:
      bos_id: beginning-of-sequence id, or None when the model has none (Qwen).
      eos_id: end-of-sequence id.
      pad_id: padding id; the EOS id when the model defines no pad token (Llama, Qwen base).
      vocab_size: number of ids the tokenizer can produce (the model's embedding may be larger).
      stop_token_ids: ids that end a sampled response, EOS first.
      add_bos_default: whether the model was trained with BOS prepended to every document.
    """

    bos_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int
    stop_token_ids: tuple[int, ...]
    add_bos_default: bool

    @abc.abstractmethod
    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def _decode(self, ids: list[int], skip_special: bool) -> str: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of a whole token string (e.g. ``"<|im_end|>"``), or None if it is not one token."""

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text map to their ids."""
        return self.batch_encode([text], add_bos=add_bos, add_eos=add_eos)[0]

    def batch_encode(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """`encode` over a list of strings: one list of ids per text, unpadded (the HF backend
        encodes them in parallel). `encode_prompts` makes a padded [batch, time] array."""
        if isinstance(texts, str):
            raise TypeError("batch_encode takes a list of strings, got a single str")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, expected str")
        if add_bos and self.bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token")
        prefix = [self.bos_id] if add_bos else []
        suffix = [self.eos_id] if add_eos else []
        return [prefix + ids + suffix for ids in self._encode_batch(list(texts))]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids` (a flat sequence, or an array of any shape read in row-major order); with
        `skip_special`, BOS/EOS/pad and other special tokens are dropped."""
        ids_n = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad_n = ids_n[(ids_n < 0) | (ids_n >= self.vocab_size)]
        if bad_n.size:
            raise ValueError(
                f"token ids {bad_n[:5].tolist()} are outside the vocabulary [0, {self.vocab_size})"
            )
        return self._decode(ids_n.tolist(), skip_special)

    def token_texts(self) -> tuple[str, ...]:
        """The text each id adds to a decoded response (with `skip_special`), by id: "" for
        special ids, and a word-initial piece keeps its leading space. Read as the text of
        [anchor, id] after the anchor's, since a lone piece decodes without that space."""
        anchor = self.encode("a")[-1]
        head = self._decode([anchor], True)
        ids = list(range(self.vocab_size))
        texts = self._decode_pairs(anchor, ids)
        return tuple(
            t[len(head) :] if t.startswith(head) else self._decode([i], True)
            for i, t in zip(ids, texts)
        )

    def _decode_pairs(self, anchor: int, ids: list[int]) -> list[str]:
        return [self._decode([anchor, i], True) for i in ids]

    def _finish_init(
        self, bos_id: int | None, eos_id: int, pad_id: int | None, extra_stop: Sequence[int]
    ) -> None:
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        stops = [eos_id, *extra_stop]
        stops += [self.token_to_id(t) for t in _STOP_TOKEN_CANDIDATES]
        self.stop_token_ids = tuple(dict.fromkeys(i for i in stops if i is not None))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id}, stop_token_ids={self.stop_token_ids})"
        )


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file; BOS/EOS/pad come from the model's own ids."""

    def __init__(self, model_path: str | os.PathLike, special: dict[str, Any] | None = None):
        import sentencepiece as spm

        self.path = Path(model_path)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self._sp.vocab_size()
        special = special or {}

        def own(i: int) -> int | None:
            return i if i >= 0 else None

        bos = self._resolve(special, "bos", own(self._sp.bos_id()))
        eos = self._resolve(special, "eos", own(self._sp.eos_id()))
        pad = self._resolve(special, "pad", own(self._sp.pad_id()))
        if eos is None:
            raise ValueError(f"{self.path}: the SentencePiece model defines no EOS token")
        self.add_bos_default = special.get("add_bos", bos is not None)
        self._finish_init(bos, eos, pad, special.get("extra_stop", ()))
        controls = {i for i in range(self.vocab_size) if self._sp.is_control(i)}
        self._special_ids = frozenset(controls | {bos, pad, *self.stop_token_ids} - {None})

    def _resolve(self, special: dict[str, Any], kind: str, default: int | None) -> int | None:
        if kind not in special:
            return default
        return _token_id(self, special[kind], kind, self.path)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        # piece_to_id maps every unknown string to <unk>.
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def _decode_pairs(self, anchor: int, ids: list[int]) -> list[str]:
        pairs = [[anchor] if i in self._special_ids else [anchor, i] for i in ids]
        return self._sp.decode(pairs)

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        if skip_special:
            return self._sp.decode([i for i in ids if i not in self._special_ids])
        # sp.decode silently drops control ids, so render runs between them separately.
        pieces, run = [], []
        for i in ids:
            if i in self._special_ids:
                pieces += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join([*pieces, self._sp.decode(run)])


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (the `tokenizers` library, no `transformers`)."""

    def __init__(self, tokenizer_json: str | os.PathLike, special: dict[str, Any] | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        self.path = Path(tokenizer_json)
        self._tok = RustTokenizer.from_file(str(self.path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        special = special or {}
        vocab = self._tok.get_vocab(with_added_tokens=True)

        def pick(kind: str, candidates: tuple[str, ...]) -> int | None:
            if kind in special:
                return _token_id(self, special[kind], kind, self.path)
            return next((vocab[c] for c in candidates if c in vocab), None)

        bos = pick("bos", _BOS_CANDIDATES)
        eos = pick("eos", _EOS_CANDIDATES)
        pad = pick("pad", _PAD_CANDIDATES)
        if eos is None:
            raise ValueError(
                f"{self.path}: cannot tell which token is EOS (no tokenizer_config.json, "
                f"special_tokens_map.json or generation_config.json next to it, and none of "
                f"{_EOS_CANDIDATES} in the vocabulary); pass eos_token= to load_tokenizer"
            )
        if "add_bos" in special:
            self.add_bos_default = bool(special["add_bos"])
        else:  # The post-processor (e.g. Llama's TemplateProcessing) says whether BOS is added.
            probe = self._tok.encode("a", add_special_tokens=True).ids
            self.add_bos_default = bos is not None and probe[:1] == [bos]
        self._finish_init(bos, eos, pad, special.get("extra_stop", ()))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # add_special_tokens=False: BOS/EOS are this class's decision, not the post-processor's.
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode_pairs(self, anchor: int, ids: list[int]) -> list[str]:
        return self._tok.decode_batch([[anchor, i] for i in ids], skip_special_tokens=True)

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)


def _token_id(tok: Tokenizer, token: str | int | None, kind: str, path: Path) -> int | None:
    if token is None or isinstance(token, int):
        return token
    i = tok.token_to_id(token)
    if i is None:
        raise ValueError(f"{path}: {kind} token {token!r} is not in the vocabulary")
    return i


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e


def _token_name(value: Any) -> str | None:
    # tokenizer_config.json writes tokens either as strings or as AddedToken dicts.
    return value.get("content") if isinstance(value, dict) else value


def _special_from_configs(directory: Path) -> dict[str, Any]:
    """BOS/EOS/pad and extra stop ids from the HF config files in `directory`, where present.

    Precedence: tokenizer_config.json, then special_tokens_map.json, then generation_config.json.
    A token set to null in a tokenizer file (Qwen's `"bos_token": null`) stays absent even if
    generation_config.json names an id for it.
    """
    special: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            config = _read_json(directory / name)
            for kind in ("bos", "eos", "pad"):
                if kind not in special and f"{kind}_token" in config:
                    special[kind] = _token_name(config[f"{kind}_token"])
            if "add_bos" not in special and "add_bos_token" in config:
                special["add_bos"] = bool(config["add_bos_token"])
    if (directory / "generation_config.json").is_file():
        config = _read_json(directory / "generation_config.json")
        eos_ids = config.get("eos_token_id")
        eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else []
        for kind in ("bos", "pad"):
            if kind not in special and config.get(f"{kind}_token_id") is not None:
                special[kind] = int(config[f"{kind}_token_id"])
        if "eos" not in special and eos_ids:
            special["eos"] = int(eos_ids[0])
        # Llama 3.1 lists <|eom_id|> and <|eot_id|> here: generation must stop on all of them.
        special["extra_stop"] = tuple(int(i) for i in eos_ids)
    return special


def load_tokenizer(
    path: str | os.PathLike,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
) -> Tokenizer:
    """Loads a `.model` file, a `tokenizer.json`, or an HF model directory holding either.

    In a directory, `tokenizer.json` wins over `tokenizer.model`, and BOS/EOS/pad are read from
    `tokenizer_config.json` / `special_tokens_map.json` / `generation_config.json`. The keyword
    arguments name tokens that override everything else.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    directory = path if path.is_dir() else path.parent
    special = _special_from_configs(directory)
    for kind, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
        if token is not None:
            special[kind] = token
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "tokenizer.model"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
        path = found[0]
    if path.suffix == ".json":
        return HFTokenizer(path, special)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path, special)
    raise ValueError(f"unknown tokenizer file type {path.name!r}: expected .model or .json")


def train_sentencepiece(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_prefix: str | os.PathLike,
    user_defined_symbols: Sequence[str] = ("<think>", "</think>", "<answer>", "</answer>"),
    **trainer_kwargs: Any,
) -> SentencePieceTokenizer:
    """Trains a small BPE SentencePiece model and loads it; writes `{model_prefix}.model`.

    Byte fallback makes every string encodable, and split digits give one token per digit so
    arithmetic tokenises consistently (as in Llama and Gemma). Ids: pad 0, unk 1, bos 2, eos 3.
    Text round-trips exactly: no NFKC normalisation, no whitespace collapsing, no dummy prefix
    (so encode(prompt) + encode(response) matches encode(prompt + response) at the seam).
    `vocab_size` is an upper bound when the corpus is too small to fill it.
    """
    options: dict[str, Any] = dict(
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        minloglevel=2,
    )
    options.update(trainer_kwargs)
    minimum = 256 + 4 + len(user_defined_symbols)  # byte pieces + specials + user symbols
    if options["byte_fallback"] and vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is below {minimum}, the byte-fallback minimum")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        user_defined_symbols=list(user_defined_symbols),
        **options,
    )
    return SentencePieceTokenizer(f"{model_prefix}.model")


def encode_prompts(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    max_len: int,
    pad_to_multiple: int = 64,
    add_bos: bool | None = None,
    overflow: Literal["error", "truncate_left"] = "error",
) -> tuple[np.ndarray, np.ndarray]:
    """Encodes rendered prompts into a left-padded batch for the sampler.

    Left padding puts every prompt's last token in the last column, so decoding starts at the same
    position for the whole batch. The width is the longest prompt rounded up to `pad_to_multiple`
    (capped at `max_len`), so only a few shapes reach `jit`.

    Args:
      prompts: B prompt strings, templates already applied.
      max_len: the longest prompt allowed, in tokens.
      add_bos: prepend BOS; None means `tokenizer.add_bos_default`.
      overflow: "error" raises on a prompt longer than `max_len`; "truncate_left" keeps its last
        tokens (after BOS), where the question's end and the answer cue are.

    Returns:
      tokens_bt: int32 [B, T] ids, `tokenizer.pad_id` on the left.
      lengths_b: int32 [B] number of real tokens per row.
    """
    if len(prompts) == 0:
        raise ValueError("encode_prompts got no prompts")
    if max_len < 1 or pad_to_multiple < 1:
        raise ValueError(
            f"need max_len >= 1 and pad_to_multiple >= 1, got {max_len}, {pad_to_multiple}"
        )
    if overflow not in ("error", "truncate_left"):
        raise ValueError(f"overflow must be 'error' or 'truncate_left', got {overflow!r}")
    add_bos = tokenizer.add_bos_default if add_bos is None else add_bos
    rows = tokenizer.batch_encode(prompts, add_bos=add_bos)
    for b, ids in enumerate(rows):
        if not ids:
            raise ValueError(f"prompt {b} encodes to no tokens")
        if len(ids) > max_len:
            if overflow == "error":
                raise ValueError(
                    f"prompt {b} has {len(ids)} tokens, more than max_len={max_len} "
                    f"(starts {prompts[b][:60]!r}); raise max_len or use overflow='truncate_left'"
                )
            keep = ids[:1] if add_bos else []
            rows[b] = keep + ids[len(ids) - (max_len - len(keep)) :]
    longest = max(len(ids) for ids in rows)
    width = min(-(-longest // pad_to_multiple) * pad_to_multiple, max_len)
    tokens_bt = np.full((len(rows), width), tokenizer.pad_id, dtype=np.int32)
    lengths_b = np.array([len(ids) for ids in rows], dtype=np.int32)
    for b, ids in enumerate(rows):
        tokens_bt[b, width - len(ids) :] = ids
    return tokens_bt, lengths_b
