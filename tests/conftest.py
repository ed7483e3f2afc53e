"""Test set-up: CPU only, with 8 fake devices so that sharding is exercised."""

import os

# Must be set before jax is imported anywhere.
# The collective timeouts are raised because 8 device threads share 2 cores: under load a
# device thread can reach an all-reduce long after the others, which XLA:CPU would otherwise
# treat as a hang after 40 s and abort the process.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_cpu_collective_call_terminate_timeout_seconds=900"
    + " --xla_cpu_collective_call_warn_stuck_timeout_seconds=300"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
