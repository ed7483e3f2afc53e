"""Zero-RL training: `python launch/train.py --config=configs/<run>.py --workdir=DIR`.

Defaults to the tiny CPU config. Override any key on the command line, e.g.
`--config.rl.loss.kl_coef=0 --config.total_steps=300`; rerunning with the same workdir resumes.
On several hosts `jax.distributed` is initialised first: Cloud TPU slices (GCE VMs and GKE) and
SLURM jobs of several tasks are detected; otherwise give every process
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (process 0's host). Each
process reads its share of the prompts, process 0 writes the logs, and all processes write the
checkpoints together.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from zero_rl.config import check_command_line

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "tiny.py")
if __name__ == "__main__":
    # Before the flags are defined: config_flags applies `--config.*` overrides right away and
    # would name a mistyped key without listing the valid ones.
    try:
        check_command_line(sys.argv[1:], _DEFAULT_CONFIG)
    except (KeyError, FileNotFoundError) as err:
        sys.exit(f"error: {err.args[0]}")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "run config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/zero-rl-tiny", "checkpoints, logs, config")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "initialise jax.distributed: auto = when the environment shows several hosts",
)  # fmt: skip
# TPU pods and SLURM describe the cluster themselves; elsewhere (several GPU hosts, or processes
# on one machine) name the coordinator and this process's place.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, from 0")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    import jax

    from zero_rl import sharding

    sharding.initialize_distributed(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    if jax.process_index() != 0:  # process 0 reports progress; the others only problems
        logging.getLogger().setLevel(logging.WARNING)
    from zero_rl.train.loop import train

    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
