"""Only zero_rl.data.tasks may import seqio/TensorFlow: the core never pays for (or sees) TF."""

import subprocess
import sys

CHECK = """
import sys
import zero_rl.data, zero_rl.tokenizer
from zero_rl.data import load_benchmark
load_benchmark("amc23")
heavy = sorted(m for m in ("tensorflow", "seqio", "tensorflow_text") if m in sys.modules)
assert not heavy, f"importing zero_rl.data pulled in {heavy}"
"""


def test_data_and_tokenizer_do_not_import_tensorflow():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


CORE = """
import sys
import zero_rl.models, zero_rl.sampler, zero_rl.rl, zero_rl.rewards
import zero_rl.train.loop, zero_rl.train.sft, zero_rl.train.batch, zero_rl.train.update
heavy = sorted(m for m in ("tensorflow", "seqio", "tensorflow_text") if m in sys.modules)
assert not heavy, f"importing the core pulled in {heavy}"
"""


def test_model_sampler_losses_and_trainer_do_not_import_tensorflow():
    result = subprocess.run([sys.executable, "-c", CORE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
