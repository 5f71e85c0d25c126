"""Data parallelism: one `data` mesh axis over every device of every process.

Parameters and the device-resident dataset are replicated; batches are sharded along their first axis.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siamese_jax.errors import UserError

DATA_AXIS = 'data'


def data_mesh(devices=None) -> Mesh:
  """A one-axis mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'batch size') -> None:
  """The global batch must split evenly over the devices."""
  if batch_size % mesh.size:
    raise UserError(f'{what} {batch_size} is not divisible by the {mesh.size} devices; change it')


def put_global_batch(local_batch, mesh: Mesh):
  """This process's slice of a batch (host arrays) -> one global array sharded over the mesh."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def put_replicated(tree, mesh: Mesh):
  """Host arrays -> the same value on every device (each process passes identical data)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
