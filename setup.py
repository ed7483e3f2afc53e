"""zero-rl: zero RL (RL from verifiable rewards, straight from a base model) in JAX."""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges are the versions this package is tested with (lower bound) up to the next major
# release that may break APIs (flax NNX, orbax and seqio change between minor versions).
CORE = [
    "jax>=0.10.0,<0.12",
    "jaxlib>=0.10.0,<0.12",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1,<3",
    "numpy>=1.26,<3",
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.21,<0.24",
    "safetensors>=0.4,<0.9",
    "sympy>=1.13,<1.15",
    "math-verify>=0.7,<0.10",
    "tensorboard>=2.18,<2.22",
    "pyarrow>=16,<27",
    "tqdm>=4.66,<5",
]

EXTRAS = {
    # seqio brings TensorFlow; only zero_rl.data.tasks imports it.
    "data": ["seqio>=0.0.19,<0.1"],
    # torch + transformers are only the reference in parity tests and CPU benchmarks.
    "test": [
        "seqio>=0.0.19,<0.1",
        "pytest>=8",
        "pytest-xdist>=3.6,<4",
        "ruff>=0.15,<0.18",
        "torch==2.13.0",
        "transformers>=4.50,<6",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "matplotlib>=3.8",
    ],
    "notebooks": ["jupyterlab>=4", "matplotlib>=3.8"],
    "tpu": ["jax[tpu]>=0.10.0,<0.12"],
    "cuda": ["jax[cuda12]>=0.10.0,<0.12"],
}

setup(
    name="zero-rl",
    version="0.1.0",
    description="Zero RL (RLVR from a base model, GRPO family) in JAX/Flax NNX",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["zero_rl", "zero_rl.*"]),
    package_data={"zero_rl": ["data/benchmarks/**/*", "assets/**/*", "tasks/data/*"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
