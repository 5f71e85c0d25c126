"""Multi-process start-up through `jax.distributed`, and nothing at all on a single process."""

from __future__ import annotations

import os

import jax
from absl import flags, logging

flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for multi-process GPU runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes, for multi-process GPU runs.')
flags.DEFINE_integer('process_id', None, 'This process\'s index, for multi-process GPU runs.')

# Environments where jax.distributed.initialize() finds its settings itself.
_AUTO_DETECTED = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


def initialize() -> None:
  """Joins the other processes when running multi-process; a no-op otherwise."""
  fl = flags.FLAGS
  if fl.coordinator_address or fl.num_processes:
    jax.distributed.initialize(fl.coordinator_address, fl.num_processes, fl.process_id)
  elif any(os.environ.get(name) for name in _AUTO_DETECTED) and _multi_worker():
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _multi_worker() -> bool:
  """True when the detected cluster really has several processes (a lone SLURM task needs nothing)."""
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1 or ',' in tpu_hosts or bool(
      os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'))
