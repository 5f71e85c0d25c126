"""The embedding database: build / add / query on a network trained briefly on real MNIST, exact and
approximate search against brute force, the weighted-L1 head's re-ranking, refusals and killed builds."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, data_dir
from PIL import Image

from configs import mnist
from siamese_jax import cli, datasets, embedding_index, evaluators, index, models, train
from siamese_jax.errors import UserError

sys.path.insert(0, str(REPO))  # benchmarks/ is importable from the repository's root only.
from benchmarks import index_scale  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.slow  # the module's tests share a trained network


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tfds_dir):
  """A contrastive MNIST run of 20 steps (a few seconds) with a 300-image validation split."""
  config = mnist.get_config('smoke')
  config.data.manual_dir = str(data_dir('mnist'))
  config.data.tfds_data_dir = str(tfds_dir)
  config.data.validation_size = 300
  config.train.num_steps = 20
  config.train.eval_every = 10
  config.evaluators.verification.pairs = 200
  config.test_evaluators.test.pairs = 200
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def embedder(trained):
  return embedding_index.Embedder.load(trained)


@pytest.fixture(scope='module')
def splits(embedder):
  return datasets.load_splits(embedder.config.data)


@pytest.fixture(scope='module')
def built(trained, tmp_path_factory):
  """An index of the validation split, written by the command line."""
  out = str(tmp_path_factory.mktemp('db') / 'validation')
  run_index('build', f'--workdir={trained}', '--split=validation', f'--out={out}')
  return out


def run_index(*args):
  """`python -m siamese_jax.index ARGS` in this process."""
  argv = ['siamese_jax.index', *args]
  index.FLAGS.unparse_flags()
  index.main(cli.parse_flags(argv, index.FLAGS))


def write_images(folder, images, labels):
  """Grayscale PNGs in one folder per label; returns their paths."""
  paths = []
  for i, (image, label) in enumerate(zip(images, labels)):
    path = folder / str(label) / f'{i}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0]).save(path)
    paths.append(path)
  return paths


def assert_one_line_error(exit_info, fragment):
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith('error: ') and '\n' not in message, message
  assert fragment in message


def brute_force(embeddings, queries, scorer, k):
  """Ids and scores of the k best items by the network's own comparison of every (query, item) pair."""
  scores = scorer.similarity(queries[:, None], embeddings[None])
  ids = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return ids, np.take_along_axis(scores, ids, axis=1)


# The database on a trained network.


def test_build_records_the_model_and_every_item(built, embedder, splits):
  db = embedding_index.Index.load(built)
  validation = splits['validation']
  assert (len(db), db.dim, db.metric, db.kind) == (len(validation), 128, 'euclidean', 'flat')
  assert db.model == embedder.card and db.model.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(db.labels, np.asarray(validation.class_names)[validation.labels])
  assert db.sources[7] == 'split:validation:7'
  saved = json.loads((next(pathlib.Path(built).glob('version-*')) / 'index.json').read_text())
  assert saved['model']['step'] == embedder.card.step and len(saved['model']['config_sha256']) == 64


def test_exact_search_equals_brute_force_by_the_network(built, embedder, splits):
  """Neighbours and scores of the stored index are the network's own comparison against every item."""
  db = embedding_index.Index.load(built)
  validation = splits['validation'].images
  embeddings = embedder.embed(validation)
  queries = embedder.embed(splits['test'].images[:40])
  found = db.search(queries, k=5)
  expected_ids, expected_scores = brute_force(embeddings, queries, embedder.scorer, 5)
  np.testing.assert_array_equal(found.ids, expected_ids)
  np.testing.assert_allclose(found.scores, expected_scores, rtol=1e-5, atol=1e-5)
  by_images = db.search(splits['test'].images[:40], k=5)  # The same through the index's own model.
  np.testing.assert_array_equal(by_images.ids, found.ids)


def test_retrieval_evaluator_figures_are_the_databases(built, embedder, splits):
  block = {'kind': 'retrieval', 'split': 'validation', 'metric': 'euclidean'}
  evaluator = evaluators.build('retrieval', ml_collections.ConfigDict(block), splits)
  db = embedding_index.Index.load(built)
  assert evaluator(embedder.scorer) == {'precision_at_1': embedding_index.precision_at_1(db),
                                        'map_at_r': embedding_index.map_at_r(db)}
  assert embedding_index.precision_at_1(db) > 0.5  # Chance is about 0.1 for ten digits.


def test_add_files_and_query_on_the_command_line(built, splits, tmp_path, capsys):
  db_path = str(tmp_path / 'db')
  shutil.copytree(built, db_path)
  test = splits['test']
  folder_paths = write_images(tmp_path / 'folder', test.images[:6], test.labels[:6])
  write_images(tmp_path / 'zipped', test.images[6:10], test.labels[6:10])
  with zipfile.ZipFile(tmp_path / 'more.zip', 'w') as archive:
    for path in sorted((tmp_path / 'zipped').rglob('*.png')):
      archive.write(path, path.relative_to(tmp_path / 'zipped'))
  run_index('add', f'--index={db_path}', f'--images={tmp_path / "folder"}')
  run_index('add', f'--index={db_path}', f'--images={tmp_path / "more.zip"}')
  db = embedding_index.Index.load(db_path)
  assert len(db) == len(splits['validation']) + 10
  added = db.sources[-10:]
  assert str(folder_paths[0]) in added and any('more.zip!/' in s for s in added)
  capsys.readouterr()
  out = tmp_path / 'neighbours.png'
  run_index('query', f'--index={db_path}', f'--image={folder_paths[0]}', '--k=4', f'--out={out}')
  lines = capsys.readouterr().out.splitlines()
  first = lines[2].split()  # rank id score label source: the query itself, at distance ~0.
  assert first[0] == '1' and first[4] == str(folder_paths[0]) and float(first[2]) > -1e-2
  assert first[3] == str(test.labels[0]) and len(lines) == 2 + 4 + 1
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.size[0] > 4 * image.size[1] / 2


# Refusals and interruptions.


def test_a_different_model_or_image_size_is_refused(built, trained, tmp_path, splits):
  db = embedding_index.Index.load(built)
  with pytest.raises(UserError, match=r'images of shape \(32, 32, 1\)'):
    db.search(np.zeros((1, 32, 32, 1), np.uint8), k=1)
  with pytest.raises(UserError, match='shape'):
    db.search(np.zeros((1, 64), np.float32), k=1)
  other = tmp_path / 'other'
  shutil.copytree(trained, other)
  config = json.loads((other / 'config.json').read_text())
  config['seed'] += 1  # Another run's config; its parameters still load.
  (other / 'config.json').write_text(json.dumps(config))
  with pytest.raises(UserError, match='differs in config_sha256'):
    db.use_model(embedding_index.Embedder.load(str(other), db.model.step))
  image = write_images(tmp_path / 'q', splits['test'].images[:1], [0])[0]
  with pytest.raises(SystemExit) as exit_info:
    run_index('query', f'--index={built}', f'--image={image}', f'--workdir={other}')
  assert_one_line_error(exit_info, 'differs in config_sha256')


def test_a_killed_build_leaves_nothing_that_loads(trained, tmp_path):
  """The build process is killed (SIGKILL) after writing every file, just before CURRENT would name them."""
  out = tmp_path / 'db'
  script = textwrap.dedent(f'''
      import os, signal, sys
      from siamese_jax import cli, embedding_index, index
      embedding_index._point_current = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
      argv = ['index', 'build', '--workdir={trained}', '--split=validation', '--out={out}']
      index.main(cli.parse_flags(argv, index.FLAGS))
  ''')
  done = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == -9, done.stderr
  (version,) = out.glob('version-*')
  assert {p.name for p in version.iterdir()} == {'vectors.faiss', 'items.npz', 'index.json'}
  with pytest.raises(UserError, match='unfinished build'):
    embedding_index.Index.load(str(out))
  image = write_images(tmp_path, np.zeros((1, 28, 28, 1), np.uint8), [0])[0]
  with pytest.raises(SystemExit) as exit_info:
    run_index('query', f'--index={out}', f'--image={image}')
  assert_one_line_error(exit_info, 'unfinished build')
  run_index('build', f'--workdir={trained}', '--split=validation', f'--out={out}')  # Over the leftovers.
  assert len(embedding_index.Index.load(str(out))) == 300
  assert version.name not in [p.name for p in out.glob('version-*')]  # The killed build's files are gone.


def test_an_interrupted_add_keeps_the_previous_index(built, tmp_path, monkeypatch):
  db_path = str(tmp_path / 'db')
  shutil.copytree(built, db_path)
  before = embedding_index.Index.load(db_path)

  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(embedding_index, '_point_current', interrupted)
  grown = embedding_index.Index.load(db_path)
  grown.add(before.vectors()[:5])
  with pytest.raises(KeyboardInterrupt):
    grown.save(db_path)
  after = embedding_index.Index.load(db_path)
  assert len(after) == len(before)
  np.testing.assert_array_equal(after.vectors(), before.vectors())


@pytest.mark.parametrize('args, fragment', [
    (['build', '--split=validation'], 'needs --workdir and --out'),
    (['build', '--workdir={trained}', '--out={tmp}/x'], 'give one of --split and --images'),
    (['build', '--workdir={trained}', '--split=validation', '--images=x', '--out={tmp}/x'], 'one of --split'),
    (['build', '--workdir={trained}', '--split=nope', '--out={tmp}/x'], "'nope' is not a split"),
    (['build', '--workdir={trained}', '--images={tmp}/none', '--out={tmp}/x'], 'neither a folder nor a zip'),
    (['build', '--workdir={trained}', '--images={tmp}/empty', '--out={tmp}/x'], 'no image files'),
    (['build', '--workdir={tmp}', '--split=validation', '--out={tmp}/x'], 'not a training workdir'),
    (['build', '--workdir={trained}', '--checkpoint=7', '--split=validation', '--out={tmp}/x'],
     'no checkpoint at step 7'),
    (['build', '--workdir={trained}', '--split=validation', '--out={built}'], 'already holds an index'),
    (['add', '--index={tmp}/missing', '--split=validation'], 'not found'),
    (['query', '--index={built}'], 'query needs --image'),
    (['query', '--index={built}', '--image={tmp}/missing.png'], 'missing.png not found'),
    (['query', '--index={built}', '--image={tmp}/bad.png'], 'not an image file'),
    (['query', '--index={built}', '--image={tmp}/good.png', '--k=0'], 'k=0 neighbours'),
])
def test_bad_command_lines_are_one_line_errors(built, trained, tmp_path, args, fragment):
  (tmp_path / 'bad.png').write_text('not a picture')
  (tmp_path / 'empty').mkdir()
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / 'good.png')
  args = [a.format(trained=trained, tmp=tmp_path, built=built) for a in args]
  with pytest.raises(SystemExit) as exit_info:
    run_index(*args)
  assert_one_line_error(exit_info, fragment)


def test_command_line_error_exits_1_without_a_traceback(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'siamese_jax.index', 'query', f'--index={tmp_path}',
                         '--image=a.png'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == 'error: image file a.png not found'
  assert 'Traceback' not in done.stderr


# The index on its own: approximate kinds, Koch's head.


def clustered(seed, n, dim=16, clusters=20):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize('kind', ('hnsw', 'ivf'))
@pytest.mark.parametrize('metric', ('euclidean', 'cosine'))
def test_approximate_kinds_find_the_exact_neighbours_and_survive_saving(kind, metric, tmp_path):
  gallery, queries = clustered(0, 3000), clustered(1, 100)
  exact, approximate = embedding_index.Index(16, metric), embedding_index.Index(16, metric, kind, nprobe=8)
  for db in (exact, approximate):
    db.add(gallery, sources=[f's{i}' for i in range(3000)])
  truth, found = exact.search(queries, 10), approximate.search(queries, 10)
  recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(truth.ids, found.ids)])
  assert recall > 0.9
  same = np.equal(found.ids, truth.ids)
  np.testing.assert_allclose(found.scores[same], truth.scores[same], rtol=1e-6)  # Exact scores either way.
  approximate.add(clustered(2, 50))  # Added after the IVF lists were made.
  approximate.save(str(tmp_path / 'db'))
  loaded = embedding_index.Index.load(str(tmp_path / 'db'))
  assert (loaded.kind, len(loaded)) == (kind, 3050)
  again = loaded.search(queries, 10)
  np.testing.assert_array_equal(again.ids, approximate.search(queries, 10).ids)
  np.testing.assert_array_equal(again.sources[:, 0], loaded.sources[again.ids[:, 0]])


def koch_head_scores(weights, bias, e1, e2):
  """The network's own weighted-L1 head (models.WeightedL1Head) on embedding pairs."""
  params = {'weights': {'kernel': jnp.asarray(weights)[:, None], 'bias': jnp.asarray([bias])}}
  return np.asarray(models.WeightedL1Head().apply({'params': params}, e1, e2))


@pytest.mark.parametrize('signs, kind', [('negative', 'flat'), ('mixed', 'flat'), ('mixed', 'hnsw')])
def test_weighted_l1_head_reranks_a_shortlist_to_the_heads_own_scores(signs, kind):
  rng = np.random.default_rng(3)
  gallery, queries = clustered(4, 500), clustered(5, 30)
  weights = -np.abs(rng.normal(1.0, 0.3, size=16))
  if signs == 'mixed':  # As in a trained head: a few small positive weights on dimensions of little use.
    weights[:3] = 0.05
  weights[3] = 0.0  # A dimension the head ignores.
  db = embedding_index.Index(16, 'weighted_l1', kind, head_weights=weights, head_bias=0.7)
  db.add(gallery)
  found = db.search(queries, k=5)
  scores = koch_head_scores(weights, 0.7, queries[:, None], gallery[None])
  expected = np.argsort(-scores, axis=1, kind='stable')[:, :5]
  # All weights <= 0: the head is an L1 distance on |w|-scaled vectors, so faiss's own order is exact. With
  # small positive weights the default shortlist (10 x 5 candidates) holds the head's best five.
  np.testing.assert_array_equal(found.ids, expected)
  np.testing.assert_allclose(found.scores, np.take_along_axis(scores, expected, axis=1), rtol=1e-5, atol=1e-5)
  looser = embedding_index.Index(16, 'weighted_l1', kind, head_weights=rng.normal(size=16), head_bias=0.7,
                                 shortlist=2)
  looser.add(gallery)
  scores = koch_head_scores(looser.head_weights, 0.7, queries[:, None], gallery[None])
  shortlisted = looser.search(queries, k=5)  # Whatever the shortlist holds is scored exactly and in order.
  np.testing.assert_allclose(shortlisted.scores, np.take_along_axis(scores, shortlisted.ids, axis=1), rtol=1e-5,
                             atol=1e-5)
  assert np.all(np.diff(shortlisted.scores, axis=1) <= 0)


def test_benchmark_reports_exact_recall_for_flat_and_high_recall_for_hnsw():
  rows = index_scale.run(16, 2000, ['flat', 'hnsw'], ['64'], ['8'], num_queries=20, k=10, clusters=20, spread=0.3,
                         seed=0)
  assert [(r['kind'], r['recall']) for r in rows][0] == ('flat', 1.0)
  assert rows[1]['kind'] == 'hnsw' and rows[1]['recall'] > 0.9 and rows[1]['p50_ms'] > 0
