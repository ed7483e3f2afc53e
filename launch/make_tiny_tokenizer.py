"""Rebuilds the tiny SentencePiece tokenizers shipped for the tiny configs.

    python launch/make_tiny_tokenizer.py          # the addition task's, for configs/tiny.py
    python launch/make_tiny_tokenizer.py --config=configs/countdown_tiny.py --vocab_size=48
    python launch/make_tiny_tokenizer.py --config=configs/knights_knaves_tiny.py --vocab_size=64

With --config, the corpus is the text of the config's generated task (`data.train`, with its
`data.tasks` settings) and the model is written to `zero_rl/assets/tiny_<task>`. The model
files are committed so the tiny runs need no downloads; this script documents and reproduces
them.
"""

from absl import app, flags
from ml_collections import config_flags

from zero_rl.data.synthetic import AdditionTask, tokenizer_corpus
from zero_rl.tasks import make_task
from zero_rl.tokenizer import train_sentencepiece

_CONFIG = config_flags.DEFINE_config_file("config", None, "a tiny config of a generated task")
_OUT = flags.DEFINE_string("out", None, "model prefix to write (default: by task)")
_VOCAB = flags.DEFINE_integer("vocab_size", 48, "vocabulary size")


def main(argv):
    del argv
    if _CONFIG.value is None:
        corpus, out = tokenizer_corpus(AdditionTask()), "zero_rl/assets/tiny_addition"
    else:
        name = _CONFIG.value.data.train
        task = make_task(name, _CONFIG.value.data.tasks[name].to_dict())
        corpus, out = task.tokenizer_corpus(), f"zero_rl/assets/tiny_{name}"
    out = _OUT.value or out
    tok = train_sentencepiece(
        corpus,
        vocab_size=_VOCAB.value,
        model_prefix=out,
        user_defined_symbols=(),
        byte_fallback=False,
    )
    sample = corpus[0]
    print(f"wrote {out}.model: vocab {tok.vocab_size}, {sample!r} -> {tok.encode(sample)}")
    if tok.decode(tok.encode(sample)) != sample:
        raise SystemExit(f"the tokenizer does not round-trip {sample!r}")


if __name__ == "__main__":
    app.run(main)
