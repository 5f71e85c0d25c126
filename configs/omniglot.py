"""Koch et al. (2015) one-shot Omniglot.

Koch's tower on 105 px images of the 30 background alphabets x drawers 1-12; validate 20-way one-shot on
10 other alphabets x drawers 13-16. The default trains it on within-alphabet episodes; `:koch2015` is the
paper's own set-up (binary cross-entropy on 32 pairs a step). `:cpu` is a small net that trains on a
laptop CPU in 20 minutes, `:final` the same on all 40 open alphabets, `:smoke` a small tower that trains
in about a minute (used by the end-to-end test).
"""

from siamese_jax import config_schema
from siamese_jax.datasets import omniglot


def get_config(variant: str = ''):
  config = config_schema.base_config()
  config.data.name = 'omniglot'
  config.data.manual_dir = ''  # holds images_background.zip / images_evaluation.zip; '' = $SIAMESE_JAX_DATA/omniglot
  config.data.tfds_data_dir = ''  # where the prepared dataset is written; '' = the TFDS default
  config.data.image_size = 105
  config.data.train_alphabets = omniglot.BACKGROUND_ALPHABETS
  config.data.train_drawers = tuple(range(1, 13))
  config.data.validation_alphabets = omniglot.OPEN_EVALUATION_ALPHABETS
  config.data.validation_drawers = (13, 14, 15, 16)
  config.data.test_alphabets = omniglot.OPEN_EVALUATION_ALPHABETS
  config.data.test_drawers = (17, 18, 19, 20)
  config.data.train_rotations_as_classes = False
  config.data.train_mirrors_as_classes = False
  config.data.crop_to_ink = False  # True: each drawing cut to the square around its ink before resizing

  config.evaluators.oneshot_20way = dict(kind='oneshot', split='validation', ways=20, shots=1, episodes=320,
                                         within_group=True)
  config.evaluators.oneshot_20way_across = dict(kind='oneshot', split='validation', ways=20, shots=1,
                                                episodes=320, within_group=False)
  config.train.best_metric = 'oneshot_20way/accuracy'
  # Lake-format runs (one alphabet, support and queries from two drawers) from drawers never trained on.
  config.test_evaluators.lake_runs = dict(kind='lake_runs', split='test', num_runs=20, run_sets=5)

  if variant == '':
    # Each image classified among its 32-way within-alphabet episode: more accuracy per image seen than
    # Koch's pairs (BENCHMARKS.md, "Koch's config").
    config.loss.name = 'episodic'
    config.loss.temperature = 1.0
    config.loss.symmetric = True
    config.batch.kind = 'classes'
    config.batch.size = 64  # the images of Koch's 32 pairs
    config.batch.images_per_class = 2
    config.batch.classes_per_group = 32
  elif variant == 'smoke':
    config.data.image_size = 32
    config.model.features = (16, 32, 32)
    config.model.kernel_sizes = (5, 3, 3)
    config.model.embedding_dim = 128
    config.batch.size = 64
    config.optimizer.learning_rate = 1e-3
    config.optimizer.decay_steps = 100
    config.train.num_steps = 600
    config.train.log_every = 100
    config.train.eval_every = 300
    config.train.steps_per_call = 10
    config.evaluators.oneshot_20way.episodes = 100
    config.evaluators.oneshot_20way_across.episodes = 100
  elif variant in ('cpu', 'final'):
    config.data.image_size = 32  # halves evenly through four 2x2 pools (28 px loses a row and column at 7x7)
    config.data.train_drawers = tuple(range(1, 17))
    config.data.train_rotations_as_classes = True
    config.data.crop_to_ink = True  # every drawing fills the 32 px input, whatever its size and place on the page
    config.model.encoder = 'conv_blocks'
    config.model.features = (32, 64, 256, 512)  # narrow where the maps are large, wide where small (8x8, 4x4)
    config.model.final_pool = 'max'  # all four positions of the last 2x2 map
    config.model.embedding_dim = 0
    config.model.koch = False
    config.model.head = 'euclidean'
    config.loss.name = 'episodic'
    config.loss.temperature = 1.0
    config.loss.symmetric = True  # each support is also classified among its episode's queries
    config.batch.kind = 'classes'
    config.batch.size = 200
    config.batch.images_per_class = 2
    config.batch.classes_per_group = 50  # two 50-way episodes of one alphabet each: more near neighbours per query
    config.augment.strength = 0.5
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = 'cosine'
    config.optimizer.decay_steps = 0  # the decay ends with the run: train.num_steps, or the clock first
    config.train.eval_average_shifts = 1  # a stroke a pixel off moves the mean embedding less
    config.train.num_steps = 4000  # about what a fast 2-core machine gives in the budget; the clock ends slower runs
    config.train.time_budget_minutes = 18.0  # training stops here with its decay complete: 20 minutes in all
    config.train.log_every = 100
    config.train.eval_every = 800  # 3-5 validations in 18 minutes: each embeds five shifted views of every image
  if variant == 'final':
    # The model to score on Lake's published runs: all 40 open alphabets, drawers 17-20 held out.
    config.data.train_alphabets = omniglot.BACKGROUND_ALPHABETS + omniglot.OPEN_EVALUATION_ALPHABETS
    config.data.validation_alphabets = config.data.train_alphabets
    config.data.validation_drawers = (17, 18, 19, 20)
    config.data.test_alphabets = ()
    del config.test_evaluators['lake_runs']
  elif variant not in ('', 'koch2015', 'smoke', 'cpu'):
    raise ValueError(f'unknown variant {variant!r} of configs/omniglot.py (known: koch2015, smoke, cpu, final)')
  return config
