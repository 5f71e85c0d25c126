"""Data parallelism: one `data` mesh axis over every device of every process.

Parameters are replicated; a device-resident dataset is replicated or split by rows (`shard_dataset`);
batches are sharded along their first axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def put_sharded_table(table: np.ndarray, mesh: Mesh):
  """A host table (e.g. all training images) split by rows over the devices, zero-padded to fit."""
  rows = -(-len(table) // mesh.size) * mesh.size
  padded = np.zeros((rows,) + table.shape[1:], table.dtype)
  padded[:len(table)] = table
  return jax.make_array_from_callback(padded.shape, batch_sharded(mesh), lambda index: padded[index])


def gather_rows(table, indices, mesh: Mesh, table_sharded: bool):
  """table[indices], sharded along the first axis of `indices`.

  A replicated table is gathered locally. A row-sharded table (device memory / devices each) is
  gathered with every device contributing the rows it holds, zeros elsewhere, summed and scattered
  back in one reduce-scatter: the batch crosses the interconnect once, the table never does.
  """
  out_sharding = batch_sharded(mesh)
  if not table_sharded:
    return jax.lax.with_sharding_constraint(table[indices], out_sharding)

  def local_gather(shard, indices):
    start = jax.lax.axis_index(DATA_AXIS) * shard.shape[0]
    local = indices - start
    mine = (local >= 0) & (local < shard.shape[0])
    rows = shard[jnp.clip(local, 0, shard.shape[0] - 1)]
    rows = jnp.where(mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim)), rows, 0)
    return jax.lax.psum_scatter(rows, DATA_AXIS, scatter_dimension=0, tiled=True)

  gathered = jax.shard_map(local_gather, mesh=mesh, in_specs=(PartitionSpec(DATA_AXIS), PartitionSpec()),
                           out_specs=PartitionSpec(DATA_AXIS))(table, indices)
  return jax.lax.with_sharding_constraint(gathered, out_sharding)
