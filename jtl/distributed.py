"""Several processes, one run, on JAX's own runtime (`jax.distributed`).

Each process drives its local devices, reads its part of every global batch
(jtl/data/pipeline.py) and writes its part of each orbax checkpoint; process 0
alone writes metrics, the summary and the workdir's lock. launch.sh sets the
variables read here:

  ./launch.sh --processes 2 CONFIG ...      # N processes on this machine (CPU: gloo)
  ./launch.sh --slurm CONFIG ...            # srun inside a SLURM allocation
  ./launch.sh --tpu NAME --zone Z CONFIG    # every worker of a Cloud TPU VM pod
"""

from __future__ import annotations

import os

import jax


def initialize() -> bool:
  """Joins the run's other processes, if any; returns whether it did. Call before any JAX work.

  JTL_NUM_PROCESSES > 1 (with JTL_PROCESS_ID and JTL_COORDINATOR host:port) names the
  processes explicitly; JTL_DISTRIBUTED=1 leaves it to JAX's detection of SLURM, Cloud
  TPU and other clusters.
  """
  count = int(os.environ.get("JTL_NUM_PROCESSES", "1"))
  if count <= 1 and os.environ.get("JTL_DISTRIBUTED") != "1":
    return False
  # CPU collectives across processes (the local test of a multi-host run); GPUs and TPUs
  # use their own (NCCL, ICI) and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if count <= 1:
    jax.distributed.initialize()
    return True
  try:
    process_id, coordinator = int(os.environ["JTL_PROCESS_ID"]), os.environ["JTL_COORDINATOR"]
  except KeyError as e:
    raise ValueError(f"JTL_NUM_PROCESSES={count} needs {e.args[0]} too (launch.sh "
                     "--processes N sets all three).") from None
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=count,
                             process_id=process_id)
  return True
