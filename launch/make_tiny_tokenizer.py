"""Rebuilds the tiny SentencePiece tokenizer shipped for the synthetic addition task.

    python launch/make_tiny_tokenizer.py [--out=zero_rl/assets/tiny_addition]

The model file is committed so the default run needs no downloads; this script documents and
reproduces it.
"""

from absl import app, flags

from zero_rl.data.synthetic import AdditionTask, tokenizer_corpus
from zero_rl.tokenizer import train_sentencepiece

_OUT = flags.DEFINE_string("out", "zero_rl/assets/tiny_addition", "model prefix to write")
_VOCAB = flags.DEFINE_integer("vocab_size", 48, "vocabulary size")


def main(argv):
    del argv
    tok = train_sentencepiece(
        tokenizer_corpus(AdditionTask()),
        vocab_size=_VOCAB.value,
        model_prefix=_OUT.value,
        user_defined_symbols=(),
        byte_fallback=False,
    )
    sample = "What is 37 + 45?\n7+5=12, 3+4+1=8, \\boxed{82}"
    print(f"wrote {_OUT.value}.model: vocab {tok.vocab_size}, {sample!r} -> {tok.encode(sample)}")


if __name__ == "__main__":
    app.run(main)
