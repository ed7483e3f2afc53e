"""Test set-up: CPU only, with 8 fake devices so that sharding is exercised."""

import atexit
import os
import shutil
import tempfile

import pytest

# Must be set before jax is imported anywhere.
# The collective timeouts are raised because 8 device threads share 2 cores: under load a
# device thread can reach an all-reduce long after the others, which XLA:CPU would otherwise
# treat as a hang after 40 s and abort the process.
# The CPU backend compiles at optimisation level 0: the tests' programs are tiny, so the suite
# is compile-bound, and level 0 cuts a compile-heavy module by about a third (tests/test_sampler.py
# 146 -> 100 s) while the HLO, hence what is computed, is the same.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_backend_optimization_level=0"
    + " --xla_cpu_collective_call_terminate_timeout_seconds=900"
    + " --xla_cpu_collective_call_warn_stuck_timeout_seconds=300"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# XLA's persistent compilation cache, one fresh directory per test session: many tests compile
# the same small programs from new function objects, and the launch scripts the tests start as
# subprocesses (which inherit this environment) compile what earlier runs compiled. Pytest-xdist
# workers inherit the controller's directory. A cache of the user's own is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE_DIR = tempfile.mkdtemp(prefix="zero-rl-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE_DIR
    atexit.register(shutil.rmtree, _XLA_CACHE_DIR, ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# Modules of a minute or more start first: pytest-xdist's workers take whole modules
# (`--dist loadfile`), and a long module picked up last would leave the other workers idle.
_LONG_MODULES = ["test_train_loop", "test_plan", "test_multihost", "test_notebooks",
                 "test_sampler", "test_bench_smoke", "test_sft", "test_train_step"]  # fmt: skip


def pytest_collection_modifyitems(config, items):
    def rank(item):
        stem = item.path.stem
        return _LONG_MODULES.index(stem) if stem in _LONG_MODULES else len(_LONG_MODULES)

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A tiny Qwen2 saved by transformers, in a directory named like a Qwen2.5 0.5B model."""
    import transformers  # noqa: PLC0415 - torch is a second of start-up for every worker

    path = tmp_path_factory.mktemp("hf") / "Qwen2.5-0.5B-test"
    hf = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_theta=1e6, tie_word_embeddings=True,
    )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(hf).save_pretrained(path)
    return path
