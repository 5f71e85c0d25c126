"""Build and query figures of `embedding_index.Index` for collections far larger than the data here.

  python -m benchmarks.index_scale --sets=128x10000,128x100000,128x1000000 --kinds=flat,hnsw --ef_search=64,128

Stores random embeddings of each DIMxCOUNT set and reports, per index kind: build seconds, the memory the
index holds, single-query latency p50 / p99 at k=10 through `Index.search` (exact re-scoring included), and
recall@10 against exact (flat) search over `--queries` held-out queries. `--clusters=0` draws isotropic
Gaussian vectors, the hardest case for an approximate index (in 128 dimensions the 10th neighbour is hardly
nearer than a random point); otherwise the vectors lie around that many class centres, as a trained
network's embeddings do, each at `--spread` times a centre's scale from its centre.
"""

from __future__ import annotations

import os
import time

import faiss
import numpy as np
from absl import app, flags

from siamese_jax import cli, embedding_index

FLAGS = flags.FlagValues()  # Its own: the index CLI, imported beside it in tests, defines global flags.
flags.DEFINE_list('sets', ['128x10000', '128x100000', '128x1000000'], 'DIMxCOUNT collections to build.',
                  flag_values=FLAGS)
flags.DEFINE_list('kinds', ['flat', 'hnsw'], 'Index kinds (flat, hnsw, ivf).', flag_values=FLAGS)
flags.DEFINE_list('ef_search', ['64', '128'], 'HNSW candidates per query to measure.', flag_values=FLAGS)
flags.DEFINE_list('nprobe', ['32'], 'IVF lists searched per query to measure.', flag_values=FLAGS)
flags.DEFINE_integer('queries', 500, 'Queries timed one at a time, and scored for recall.', flag_values=FLAGS)
flags.DEFINE_integer('k', 10, 'Neighbours per query.', flag_values=FLAGS)
flags.DEFINE_integer('clusters', 1000, 'Class centres the vectors lie around; 0: isotropic Gaussian.',
                     flag_values=FLAGS)
flags.DEFINE_float('spread', 0.5, 'Within-class standard deviation, relative to the centres\'.', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the random embeddings.', flag_values=FLAGS)


def _rss_mib() -> float:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024


def _latencies_ms(index: embedding_index.Index, queries: np.ndarray, k: int) -> np.ndarray:
  times = []
  for q in queries:
    start = time.perf_counter()
    index.search(q[None], k)
    times.append(time.perf_counter() - start)
  return np.array(times) * 1e3


def random_embeddings(rng: np.random.Generator, centres: np.ndarray | None, count: int, dim: int,
                      spread: float) -> np.ndarray:
  """float32 [count, dim]: isotropic Gaussian, or around randomly chosen `centres`."""
  noise = rng.standard_normal((count, dim), np.float32)
  if centres is None:
    return noise
  return centres[rng.integers(0, len(centres), count)] + spread * noise


def run(dim: int, count: int, kinds, ef_search, nprobe, num_queries: int, k: int, clusters: int, spread: float,
        seed: int) -> list[dict]:
  """One row per (kind, search setting): build_s, memory_mib, p50_ms, p99_ms, recall."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((clusters, dim), np.float32) if clusters else None
  vectors = random_embeddings(rng, centres, count, dim, spread)
  queries = random_embeddings(rng, centres, num_queries, dim, spread)
  rows, exact = [], None
  for kind in sorted(kinds, key=lambda kind: kind != 'flat'):  # Flat first: it is the reference.
    before = _rss_mib()
    start = time.perf_counter()
    index = embedding_index.Index(dim, 'euclidean', kind)
    index.add(vectors)
    build_s = time.perf_counter() - start
    memory = _rss_mib() - before
    settings = {'flat': [{}], 'hnsw': [{'ef_search': int(e)} for e in ef_search],
                'ivf': [{'nprobe': int(p)} for p in nprobe]}[kind]
    for setting in settings:
      index.options.update(setting)
      found = index.search(queries, k).ids
      if exact is None:
        exact = found
      recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact)])
      latencies = _latencies_ms(index, queries, k)
      rows.append(dict(dim=dim, count=count, kind=kind, setting=setting, build_s=build_s, memory_mib=memory,
                       p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
                       recall=float(recall)))
    del index
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if 'flat' not in FLAGS.kinds:
    raise app.UsageError('--kinds must include flat: it is the exact reference for recall')
  print(f'faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs; '
        f'{FLAGS.queries} queries, k={FLAGS.k}; '
        + (f'{FLAGS.clusters} clusters, spread {FLAGS.spread}' if FLAGS.clusters else 'isotropic Gaussian'))
  print('| vectors | kind | setting | build s | memory MiB | p50 ms | p99 ms | recall@10 |')
  print('|---|---|---|---|---|---|---|---|')
  for spec in FLAGS.sets:
    dim, count = (int(x) for x in spec.split('x'))
    for row in run(dim, count, FLAGS.kinds, FLAGS.ef_search, FLAGS.nprobe, FLAGS.queries, FLAGS.k, FLAGS.clusters,
                   FLAGS.spread, FLAGS.seed):
      setting = ', '.join(f'{key} {value}' for key, value in row['setting'].items()) or 'exact'
      print(f'| {count:,} x {dim} | {row["kind"]} | {setting} | {row["build_s"]:.1f} | {row["memory_mib"]:.0f} | '
            f'{row["p50_ms"]:.2f} | {row["p99_ms"]:.2f} | {row["recall"]:.3f} |', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, FLAGS))
