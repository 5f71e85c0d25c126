"""An embedding database: a collection embedded once by a trained network, stored in faiss, queried later.

The retrieval evaluator (precision@1, MAP@R) searches with this same `Index`, so the figures in
results.json are what a user of a stored index gets. How each head is searched:

| head | stored vector | faiss metric | score returned (= `Scorer.similarity`) |
|---|---|---|---|
| euclidean | the embedding | L2 | -distance |
| cosine | the embedding at unit length | inner product | cos - 1 |
| weighted_l1 (Koch) | the embedding times abs(w) | L1 | w . abs(e1 - e2) + b, re-ranked exactly |

faiss finds the candidates; their scores are then recomputed exactly from the stored vectors by the head's
own formula, so a score is the network's comparison of the two images, not faiss's float approximation.
Koch's head is an L1 distance on abs(w)-scaled vectors only where w <= 0: when some weights are positive
faiss returns a shortlist (`shortlist` times k) by that L1 distance and the head re-ranks it: it holds the
head's best when the positive weights are small, as on dimensions a trained head makes little use of.

An index on disk is a folder: `CURRENT` names the version folder that holds the complete index
(`vectors.faiss`, `items.npz`, `index.json`). A version is written in full before `CURRENT` is replaced
atomically to point at it, so a build or an `add` that is killed leaves either no index or the previous one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import zipfile

import faiss
import jax
import numpy as np
import tqdm
from PIL import Image

from siamese_jax import datasets, distances, inference
from siamese_jax.datasets import image_files
from siamese_jax.errors import UserError

METRICS = ('euclidean', 'cosine', 'weighted_l1')
KINDS = ('flat', 'hnsw', 'ivf')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')
CHUNK_SIZE = 512  # Queries scored at once: their candidates' vectors are copied out of faiss together.
FORMAT = 1
_FAISS_METRICS = {'euclidean': faiss.METRIC_L2, 'cosine': faiss.METRIC_INNER_PRODUCT,
                  'weighted_l1': faiss.METRIC_L1}


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """Which network made an index's vectors; a query must come from the same one."""

  workdir: str
  step: int
  config_sha256: str
  params_sha256: str
  embedding_dim: int
  head: str
  image_shape: tuple[int, int, int]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> ModelCard:
    return cls(**{**data, 'image_shape': tuple(data['image_shape'])})

  def check_same_model(self, other: ModelCard) -> None:
    """Raises UserError naming the first difference; the workdir may have moved, so its path is not compared."""
    for field in ('config_sha256', 'step', 'params_sha256', 'embedding_dim', 'head', 'image_shape'):
      mine, theirs = getattr(self, field), getattr(other, field)
      if mine != theirs:
        raise UserError(f'the index was built by the model in {self.workdir} at step {self.step}; the model of '
                        f'{other.workdir} at step {other.step} differs in {field} ({mine} vs {theirs})')


def _sha256(*chunks: bytes) -> str:
  digest = hashlib.sha256()
  for chunk in chunks:
    digest.update(chunk)
  return digest.hexdigest()


class Embedder:
  """A trained workdir's network with the way its image files become inputs, and its `ModelCard`."""

  def __init__(self, config, step: int, scorer, workdir: str):
    self.config = config
    self.scorer = scorer
    self.form = datasets.input_form(config.data)
    leaves = jax.tree.leaves(scorer.params)
    head = scorer.params.get('head', {}).get('weights', {})
    self.head_weights = np.asarray(head['kernel'])[:, 0] if head else None
    self.head_bias = float(np.asarray(head['bias'])[0]) if head else 0.0
    self.card = ModelCard(
        workdir=os.path.abspath(workdir), step=int(step),
        config_sha256=_sha256(config.to_json(sort_keys=True).encode()),
        params_sha256=_sha256(*(np.asarray(leaf).tobytes() for leaf in leaves)),
        embedding_dim=int(config.model.embedding_dim), head=str(config.model.head),
        image_shape=(self.form.size, self.form.size, self.form.channels))

  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = 'best') -> Embedder:
    """The network of `workdir` at its 'best' or 'latest' checkpoint, or at a step."""
    config, step, scorer = inference.load_trained(workdir, checkpoint)
    return cls(config, step, scorer, workdir)

  def embed(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """uint8 [N, H, W, C] model inputs -> float32 [N, D], in sharded batches with an optional progress bar."""
    if images.shape[1:] != self.card.image_shape:
      raise UserError(f'images of shape {images.shape[1:]} given to a model of {self.card.image_shape} inputs')
    step = self.scorer.batch_size * 4
    chunks = []
    with tqdm.tqdm(total=len(images), unit='image', disable=not progress) as bar:
      for start in range(0, len(images), step):
        chunks.append(self.scorer.embed(images[start:start + step]))
        bar.update(len(chunks[-1]))
    return np.concatenate(chunks) if chunks else np.zeros((0, self.card.embedding_dim), np.float32)


@dataclasses.dataclass(frozen=True)
class Collection:
  """Images to index, as model inputs, with each one's label and where it came from."""

  images: np.ndarray
  labels: np.ndarray
  sources: np.ndarray


def split_collection(embedder: Embedder, split: str) -> Collection:
  """A split of the run's own dataset; labels are class names, sources 'split:NAME:POSITION'."""
  splits = datasets.load_splits(embedder.config.data)
  if split not in splits:
    raise UserError(f'--split={split!r} is not a split of {embedder.config.data.name} ({", ".join(sorted(splits))})')
  image_set = splits[split]
  return Collection(image_set.images, np.asarray(image_set.class_names)[image_set.labels].astype(str),
                    np.array([f'split:{split}:{i}' for i in range(len(image_set))]))


def _parent(member: str) -> str:
  parent = os.path.dirname(member)
  return os.path.basename(parent) if parent else ''


def file_collection(embedder: Embedder, path: str) -> Collection:
  """Every image file in a folder (recursively) or a zip, sorted; the label is each file's folder name."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      members = sorted(m for m in archive.namelist() if m.lower().endswith(IMAGE_SUFFIXES))
      images = [_decode(archive.open(m), f'{path}!/{m}') for m in members]
    sources = [f'{os.path.abspath(path)}!/{m}' for m in members]
  elif os.path.isdir(path):
    members = sorted(os.path.relpath(os.path.join(root, name), path) for root, _, names in os.walk(path)
                     for name in names if name.lower().endswith(IMAGE_SUFFIXES))
    sources = [os.path.abspath(os.path.join(path, m)) for m in members]
    images = [image_files.read_image(s) for s in sources]
  else:
    raise UserError(f'--images={path} is neither a folder nor a zip file')
  if not members:
    raise UserError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) in {path}')
  pixels = np.stack([image_files.to_model_input(image, embedder.form) for image in images])
  return Collection(pixels, np.array([_parent(m) for m in members]), np.array(sources))


def _decode(file, name: str) -> Image.Image:
  try:
    with file, Image.open(file) as image:
      return image.copy()
  except OSError as e:
    raise UserError(f'cannot read image {name}: {e}') from None


def read_sources(sources, embedder: Embedder) -> np.ndarray:
  """The model inputs of stored items, read back from their sources (to draw them); blank where there is none."""
  splits, images = None, []
  for source in sources:
    if source.startswith('split:'):
      _, split, position = source.split(':')
      splits = splits or datasets.load_splits(embedder.config.data)
      images.append(splits[split].images[int(position)])
    elif '!/' in source:
      archive, member = source.split('!/', 1)
      with zipfile.ZipFile(archive) as z:
        images.append(image_files.to_model_input(_decode(z.open(member), source), embedder.form))
    elif source:
      images.append(image_files.to_model_input(image_files.read_image(source), embedder.form))
    else:
      images.append(np.zeros(embedder.card.image_shape, np.uint8))
  return np.stack(images)


@dataclasses.dataclass(frozen=True)
class Neighbours:
  """Search results [M, k], best first: positions (ids), scores (higher = more alike), labels, sources."""

  ids: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  sources: np.ndarray


class Index:
  """Labelled vectors in a faiss index, searched by a Siamese head's own score.

  Args:
    dim: embedding size.
    metric: 'euclidean', 'cosine' or 'weighted_l1' (Koch's head; needs `head_weights` [dim], `head_bias`).
    kind: 'flat' (exact), 'hnsw' (graph; `hnsw_neighbours` links per node, `ef_search` candidates per query)
      or 'ivf' (inverted lists, made from the first vectors added; `nprobe` lists searched per query).
    shortlist: for 'weighted_l1' with some positive weights, candidates re-ranked per result.
    model: the network that makes the vectors, checked against any model that queries with images.
  """

  def __init__(self, dim: int, metric: str = 'euclidean', kind: str = 'flat', *, head_weights=None,
               head_bias: float = 0.0, model: ModelCard | None = None, hnsw_neighbours: int = 32,
               ef_construction: int = 80, ef_search: int = 128, ivf_lists: int = 0, nprobe: int = 32,
               shortlist: int = 10):
    if metric not in METRICS:
      raise UserError(f'unknown index metric {metric!r}; choose one of {", ".join(METRICS)}')
    if kind not in KINDS:
      raise UserError(f'unknown index kind {kind!r}; choose one of {", ".join(KINDS)}')
    if (metric == 'weighted_l1') != (head_weights is not None):
      raise ValueError('head_weights are needed by, and only by, the weighted_l1 metric')
    self.dim, self.metric, self.kind, self.model = int(dim), metric, kind, model
    self.head_weights = None if head_weights is None else np.asarray(head_weights, np.float32)
    self.head_bias = float(head_bias)
    if self.head_weights is not None and self.head_weights.shape != (self.dim,):
      raise ValueError(f'head_weights must be [{self.dim}], got shape {self.head_weights.shape}')
    self.options = dict(hnsw_neighbours=hnsw_neighbours, ef_construction=ef_construction, ef_search=ef_search,
                        ivf_lists=ivf_lists, nprobe=nprobe, shortlist=shortlist)
    self.labels = np.zeros(0, str)
    self.sources = np.zeros(0, str)
    self.embedder = None
    self._faiss = None if kind == 'ivf' else self._new_faiss(0)

  @classmethod
  def for_model(cls, embedder: Embedder, kind: str = 'flat', **options) -> Index:
    """An empty index searched the way `embedder`'s head compares embeddings."""
    metric = embedder.card.head  # The heads are named after the metrics they compare by.
    index = cls(embedder.card.embedding_dim, metric, kind, model=embedder.card,
                head_weights=embedder.head_weights if metric == 'weighted_l1' else None,
                head_bias=embedder.head_bias, **options)
    index.embedder = embedder
    return index

  def __len__(self) -> int:
    return len(self.labels)

  def _new_faiss(self, n: int):
    metric, o = _FAISS_METRICS[self.metric], self.options
    if self.kind == 'flat':
      return faiss.IndexFlat(self.dim, metric)
    if self.kind == 'hnsw':
      index = faiss.IndexHNSWFlat(self.dim, o['hnsw_neighbours'], metric)
      index.hnsw.efConstruction = o['ef_construction']
      return index
    lists = o['ivf_lists'] or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
    self.options['ivf_lists'] = lists
    index = faiss.IndexIVFFlat(faiss.IndexFlat(self.dim, metric), self.dim, lists, metric)
    return index

  def _stored(self, embeddings: np.ndarray) -> np.ndarray:
    """Embeddings as faiss holds them (unit length for cosine, abs(w)-scaled for Koch's head)."""
    x = np.ascontiguousarray(embeddings, np.float32)
    if self.metric == 'cosine':
      x = distances.unit_length(x)
    elif self.metric == 'weighted_l1':
      x = x * np.abs(self.head_weights)
    return np.ascontiguousarray(x, np.float32)

  def _scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The head's similarity of stored queries [M, D] to stored candidates [M, C, D] -> [M, C]."""
    if self.metric == 'euclidean':
      return -distances.euclidean(queries[:, None], candidates)
    if self.metric == 'cosine':  # Stored at unit length: the dot product is the cosine.
      return np.einsum('md,mcd->mc', queries, candidates) - 1.0
    return np.abs(queries[:, None] - candidates) @ np.sign(self.head_weights) + self.head_bias

  def _check_embeddings(self, embeddings) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
      raise UserError(f'embeddings of shape {embeddings.shape} given to an index of {self.dim}-d vectors')
    return embeddings

  def add(self, embeddings, labels=None, sources=None) -> np.ndarray:
    """Appends items; returns their ids (positions in the index, which never change)."""
    embeddings = self._check_embeddings(embeddings)
    n = len(embeddings)
    labels = np.full(n, '') if labels is None else np.asarray(labels).astype(str)
    sources = np.full(n, '') if sources is None else np.asarray(sources).astype(str)
    if labels.shape != (n,) or sources.shape != (n,):
      raise ValueError(f'labels and sources must have one entry per embedding ({n})')
    stored = self._stored(embeddings)
    if self._faiss is None:  # IVF: its lists are made from the first vectors added.
      if n == 0:
        return np.zeros(0, np.int64)
      self._faiss = self._new_faiss(n)
      self._faiss.train(stored)
      self._faiss.make_direct_map()  # Candidates' vectors are read back to score them.
    self._faiss.add(stored)
    ids = np.arange(len(self), len(self) + n)
    self.labels = np.concatenate([self.labels, labels])
    self.sources = np.concatenate([self.sources, sources])
    return ids

  def get_embedder(self) -> Embedder:
    """The model that built the index: the one `use_model` gave, else loaded from its workdir once."""
    if self.embedder is None:
      if self.model is None:
        raise UserError('this index was not built from a trained workdir: search it with embeddings')
      if not os.path.isdir(self.model.workdir):
        raise UserError(f'the workdir that built the index, {self.model.workdir}, is gone; give where it is now')
      self.use_model(Embedder.load(self.model.workdir, self.model.step))
    return self.embedder

  def use_model(self, embedder: Embedder) -> None:
    """Embeds image queries with `embedder`; refuses a network other than the one that built the index."""
    if self.model is None:
      raise UserError('this index was not built from a trained workdir: search it with embeddings')
    self.model.check_same_model(embedder.card)
    self.embedder = embedder

  def search(self, queries, k: int, exclude=None, chunk_size: int = CHUNK_SIZE) -> Neighbours:
    """The k best items for each query, best first; equal scores go to the lower id.

    Args:
      queries: float embeddings [M, D], or uint8 model inputs [M, H, W, C] (embedded by the index's model).
      k: neighbours per query.
      exclude: optional int [M], an id to leave out for each query (-1: none); with the index's own
        vectors and `np.arange(len(index))` it gives leave-one-out.
      chunk_size: queries scored at once.
    """
    queries = np.asarray(queries)
    if queries.ndim == 4:
      if self.model is not None and queries.shape[1:] != self.model.image_shape:
        raise UserError(f'images of shape {queries.shape[1:]} given to an index built from '
                        f'{self.model.image_shape} images')
      queries = self.get_embedder().embed(queries)
    return self._search_stored(self._stored(self._check_embeddings(queries)), k, exclude, chunk_size)

  def _search_stored(self, queries: np.ndarray, k: int, exclude, chunk_size: int) -> Neighbours:
    """`search` for queries already in the stored form."""
    available = len(self) - (exclude is not None)
    if not 1 <= k <= available:
      raise UserError(f'k={k} neighbours asked of an index with {available} candidates per query')
    exclude = np.full(len(queries), -1) if exclude is None else np.asarray(exclude)
    fetch = k + int(np.any(exclude >= 0))
    if self.metric == 'weighted_l1' and np.any(self.head_weights > 0):
      fetch *= self.options['shortlist']
    fetch = min(fetch, len(self))
    self._set_search_options(fetch)
    ids, scores = [np.zeros((0, k), np.int64)], [np.zeros((0, k), np.float32)]
    for start in range(0, len(queries), chunk_size):
      q = queries[start:start + chunk_size]
      _, candidates = self._faiss.search(q, fetch)
      vectors = self._faiss.reconstruct_batch(np.maximum(candidates, 0).ravel()).reshape(candidates.shape + (-1,))
      s = self._scores(q, vectors)
      s[(candidates < 0) | (candidates == exclude[start:start + chunk_size, None])] = -np.inf
      order = np.lexsort((candidates, -s), axis=-1)[:, :k]
      ids.append(np.take_along_axis(candidates, order, axis=1))
      scores.append(np.take_along_axis(s, order, axis=1))
    ids = np.concatenate(ids).astype(np.int64)
    return Neighbours(ids, np.concatenate(scores).astype(np.float32), self.labels[ids], self.sources[ids])

  def _set_search_options(self, fetch: int) -> None:
    if self.kind == 'hnsw':
      self._faiss.hnsw.efSearch = max(self.options['ef_search'], fetch)
    elif self.kind == 'ivf':
      self._faiss.nprobe = self.options['nprobe']

  def vectors(self) -> np.ndarray:
    """Every stored vector [N, D], as faiss holds it."""
    return self._faiss.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)

  def leave_one_out(self, k: int, chunk_size: int = CHUNK_SIZE) -> Neighbours:
    """`search` with every item of the index, each leaving itself out."""
    return self._search_stored(self.vectors(), k, np.arange(len(self)), chunk_size)

  def save(self, path: str) -> None:
    """Writes the index as a new version of folder `path`, then points `path`/CURRENT at it atomically."""
    os.makedirs(path, exist_ok=True)
    version = f'version-{uuid.uuid4().hex[:12]}'
    folder = os.path.join(path, version)
    os.makedirs(folder)
    if self._faiss is not None:
      faiss.write_index(self._faiss, os.path.join(folder, 'vectors.faiss'))
    np.savez(os.path.join(folder, 'items.npz'), labels=self.labels, sources=self.sources)
    description = dict(format=FORMAT, count=len(self), dim=self.dim, metric=self.metric, kind=self.kind,
                       options=self.options, model=None if self.model is None else self.model.to_json(),
                       head_weights=None if self.head_weights is None else self.head_weights.tolist(),
                       head_bias=self.head_bias)
    with open(os.path.join(folder, 'index.json'), 'w') as f:
      json.dump(description, f, indent=1)
    _fsync_folder(folder)
    _point_current(path, version)
    for name in os.listdir(path):  # Earlier versions, and any left by a killed build.
      if name.startswith('version-') and name != version:
        shutil.rmtree(os.path.join(path, name), ignore_errors=True)

  @classmethod
  def load(cls, path: str) -> Index:
    """The complete index at `path`; a folder without one (e.g. a killed build) is a UserError."""
    try:
      with open(os.path.join(path, 'CURRENT')) as f:
        folder = os.path.join(path, f.read().strip())
    except FileNotFoundError:
      what = 'an unfinished build (no CURRENT)' if os.path.isdir(path) else 'not found'
      raise UserError(f'no complete index at {path}: {what}') from None
    try:
      with open(os.path.join(folder, 'index.json')) as f:
        d = json.load(f)
      if d.get('format') != FORMAT:
        raise ValueError(f'format {d.get("format")}, expected {FORMAT}')
      index = cls(d['dim'], d['metric'], d['kind'], head_weights=d['head_weights'], head_bias=d['head_bias'],
                  model=None if d['model'] is None else ModelCard.from_json(d['model']), **d['options'])
      with np.load(os.path.join(folder, 'items.npz'), allow_pickle=False) as items:
        index.labels, index.sources = items['labels'], items['sources']
      vectors = os.path.join(folder, 'vectors.faiss')
      if d['count'] or os.path.exists(vectors):
        index._faiss = faiss.read_index(vectors)  # pylint: disable=protected-access
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, zipfile.BadZipFile) as e:
      raise UserError(f'cannot read the index at {path}: {e}') from None
    stored = 0 if index._faiss is None else index._faiss.ntotal  # pylint: disable=protected-access
    counts = {d['count'], len(index.labels), len(index.sources), stored}
    if len(counts) != 1:
      raise UserError(f'the index at {path} is damaged: its parts hold {sorted(counts)} items')
    return index


def _fsync_folder(folder: str) -> None:
  """Flushes a version's files to disk before CURRENT may name it."""
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), 'rb') as f:
      os.fsync(f.fileno())


def _point_current(path: str, version: str) -> None:
  """Replaces `path`/CURRENT by one naming `version`, atomically (os.replace)."""
  pointer = os.path.join(path, f'CURRENT.{uuid.uuid4().hex[:8]}.tmp')
  with open(pointer, 'w') as f:
    f.write(version + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(pointer, os.path.join(path, 'CURRENT'))


def build(embedder: Embedder, collection: Collection, kind: str = 'flat', progress: bool = True) -> Index:
  """A new index of `collection`, embedded once by `embedder`."""
  index = Index.for_model(embedder, kind)
  index.add(embedder.embed(collection.images, progress), collection.labels, collection.sources)
  return index


def _others_of_same_class(labels: np.ndarray) -> np.ndarray:
  """R for each item: how many other items share its class. Items with R = 0 cannot be scored."""
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  r = counts[inverse] - 1
  if not r.any():
    raise UserError('retrieval metrics need a class with at least two items; every class has one')
  return r


def _hits(index: Index, k: int, chunk_size: int) -> np.ndarray:
  """bool [N, k]: whether each item's j-th nearest other item shares its label."""
  return index.leave_one_out(k, chunk_size).labels == index.labels[:, None]


def precision_at_1(index: Index, chunk_size: int = CHUNK_SIZE) -> float:
  """Fraction of items whose nearest other item shares its class (leave-one-out).

  Items that are alone in their class have no right answer and are left out.
  """
  scored = _others_of_same_class(index.labels) > 0
  return float(np.mean(_hits(index, 1, chunk_size)[scored, 0]))


def map_at_r(index: Index, chunk_size: int = CHUNK_SIZE) -> float:
  """Mean average precision at R, leave-one-out (Musgrave et al. 2020, A Metric Learning Reality Check).

  For an item with R other items of its class, AP@R = (1/R) * sum over ranks i <= R of
  precision@i where the i-th neighbour is of its class (0 where not). Unlike precision@1 it
  rewards ranking the whole class first, and unlike plain MAP it does not reward ranking them
  anywhere in the list. Items alone in their class are left out.
  """
  r = _others_of_same_class(index.labels)
  k = int(r.max())
  hits = _hits(index, k, chunk_size) & (np.arange(k) < r[:, None])
  precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
  scored = r > 0
  return float(np.mean(np.sum(precision * hits, axis=1)[scored] / r[scored]))
