"""NIH malaria cells: is a cell parasitized? Decided by comparing it with labelled reference cells.

The shared copy is all 27,558 cells downscaled to 50x50 grayscale by a third party; results say which
copy they are on (the ImageSet's `source`). Patients never span two splits.
The default (a small ResNet, 128 pairs per step) is sized for a GPU; `:smoke` is a conv tower trained for a
few hundred steps on a CPU (the end-to-end test).
"""

from siamese_jax import config_schema


def get_config(variant: str = ''):
  config = config_schema.contrastive_config(features=(32, 64, 64), kernel_sizes=(5, 3, 3))
  config.data.name = 'malaria'
  config.data.manual_dir = ''  # holds cell_images.zip or cell_images_50px_gray.zip; '' = $SIAMESE_JAX_DATA/malaria
  config.data.tfds_data_dir = ''
  config.data.image_size = 50
  config.data.channels = 1
  config.data.validation_fraction = 0.1
  config.data.test_fraction = 0.2
  config.data.split_seed = 0

  # A small ResNet with quarter turns and mirror images (cells have no up or down): the best measured
  # (BENCHMARKS.md, "Malaria").
  config.model.encoder = 'resnet'
  config.model.features = (32, 64, 128)
  config.model.blocks_per_stage = 2
  config.model.embedding_dim = 256
  config.augment.strength = 0.0
  config.augment.dihedral = True
  config.batch.size = 128
  # Unit-length embeddings, margin 1: higher validation accuracy than unnormalised ones.
  config.model.normalize_embeddings = True
  config.loss.margin = 1.0
  config.train.num_steps = 20_000
  config.train.patience = 16
  # Score each cell by the mean embedding of its eight symmetries: a small, consistent gain.
  config.train.eval_average_symmetries = True
  config.train.best_metric = 'reference/accuracy'
  # A validation cell is classified by its mean similarity to K training cells of each class.
  config.evaluators.reference = dict(kind='reference', split='validation', reference_split='train', shots=10,
                                     max_queries=1000, knn=5)
  # The test decision point on the class-similarity difference is chosen on validation cells.
  config.test_evaluators.test = dict(kind='reference', split='test', reference_split='train', shots=10, knn=5,
                                     threshold_split='validation')
  config.test_evaluators.test_pairs = dict(kind='verification', split='test', threshold_split='validation',
                                           pairs=4000)

  if variant == 'smoke':  # a conv tower: the ResNet takes 3.9 s a step at 64 pairs on a 2-core CPU, this 0.16 s
    config.model.encoder = 'conv_tower'
    config.model.features = (16, 32, 32)
    config.model.embedding_dim = 128
    config.batch.size = 64
    config.optimizer.learning_rate = 3e-3
    config.train.num_steps = 300
    config.train.eval_every = 150
    config.train.patience = 0
    config.evaluators.reference.max_queries = 500
    config.evaluators.reference.knn = 0  # k-NN embeds all 18k training cells: left to the test evaluation
    config.test_evaluators.test.max_queries = 1000
    config.test_evaluators.test_pairs.pairs = 1000
    config.train.eval_average_symmetries = False  # 8x the embedding work: kept out of the CPU smoke run
  elif variant:
    raise ValueError(f'unknown variant {variant!r} of configs/malaria.py (known: smoke)')
  return config
