"""Will a run fit? `python launch/plan.py --config=configs/mistral7b.py --mesh=fsdp=64
--device_memory_gb=95` compiles one RL step for 64 simulated devices and prints, as JSON, the
parameter count, per-device bytes (params, optimiser state, reference, KV cache, temporaries of
each program), whether the peak fits, the KV cache's partition spec and each program's compile
seconds (wall and CPU). `--slice=v5p-128` fills in the chip count and memory;
with neither --slice nor --mesh, the config's own `hardware` (slice and mesh) is planned.

Runs on CPU with one fake device per chip; nothing is allocated. Config overrides work as in
launch/train.py (`--config.sampling.max_new_tokens=4096`).
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_REPO, "configs", "tiny.py"), "run config file", lock_config=True
)
_MESH = flags.DEFINE_string(
    "mesh", "", "mesh axis sizes, e.g. fsdp=64 or data=2,fsdp=-1 (default: the config's mesh)"
)
_SLICE = flags.DEFINE_string("slice", "", "a Cloud TPU accelerator type, e.g. v5p-128")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "devices when the mesh has a -1 axis")
_MEMORY = flags.DEFINE_float("device_memory_gb", 0.0, "memory per device in GB (1e9 bytes)")


def main(argv):
    del argv
    # Imported here, and no device touched, until the fake device count is set below.
    from zero_rl.tools import plan  # noqa: PLC0415

    config = _CONFIG.value
    accelerator, axes = _SLICE.value, dict(config.mesh)
    if not accelerator and not _MESH.value and config.hardware:
        accelerator, hardware_axes = plan.parse_hardware(config.hardware)
        axes |= hardware_axes
    if _MESH.value:
        axes = plan.parse_mesh(_MESH.value)
    num_devices, memory = _NUM_DEVICES.value or None, _MEMORY.value * plan.GB or None
    if accelerator:
        chips, hbm = plan.tpu_slice(accelerator)
        if num_devices not in (None, chips):
            raise app.UsageError(f"--num_devices={num_devices} but {accelerator} has {chips}")
        num_devices, memory = chips, memory or hbm
    try:
        num_devices = plan.mesh_devices(axes, num_devices)
    except ValueError as err:
        raise app.UsageError(f"{err}; set --mesh for this slice, or --num_devices") from None

    import jax  # noqa: PLC0415

    from zero_rl import sharding  # noqa: PLC0415

    # One fake CPU device per chip: the compiler partitions for the real device count.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices)

    report = plan.plan(config, sharding.make_mesh(axes), device_memory_bytes=memory)
    if accelerator:
        report = {"slice": accelerator} | report
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(app.run(main))
