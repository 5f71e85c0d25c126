"""Batch samplers drawn with `jax.random`, so they can run inside the jitted training step.

A `ClassLayout` describes which images belong to which class and which classes to which group (the
Omniglot alphabet); it is small and lives on the device next to the images. The samplers return image
INDICES; gathering the images is the caller's business (on the device for a device-resident dataset,
on the host otherwise). All samplers are deterministic given the key.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from siamese_jax.errors import UserError


@flax.struct.dataclass
class ClassLayout:
  """Index arrays describing an `ImageSet`'s classes and groups.

  Attributes:
    order: image indices sorted by class; class c owns order[class_start[c]: class_start[c] + class_count[c]].
    class_start, class_count: [C].
    pair_classes: the classes with at least two images (the ones a positive pair can come from).
    group_order: class ids sorted by group; group g owns group_order[group_start[g]: ... + group_count[g]].
    group_start, group_count: [G].
    class_group, class_rank: [C] the group of each class and its position inside its group.
    max_class_size: the largest class (static, it sizes the M-per-class sampler's ranking).
  """

  order: jax.Array
  class_start: jax.Array
  class_count: jax.Array
  pair_classes: jax.Array
  group_order: jax.Array
  group_start: jax.Array
  group_count: jax.Array
  class_group: jax.Array
  class_rank: jax.Array
  max_class_size: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def num_classes(self) -> int:
    return self.class_start.shape[0]


def class_layout(labels: np.ndarray, groups: np.ndarray) -> ClassLayout:
  """Builds the layout on the host from per-image class and group ids."""
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  num_classes = int(labels.max()) + 1
  order = np.argsort(labels, kind='stable')
  class_count = np.bincount(labels, minlength=num_classes)
  class_start = np.concatenate([[0], np.cumsum(class_count)[:-1]])
  class_group = np.zeros(num_classes, np.int64)
  class_group[labels] = groups
  group_order = np.argsort(class_group, kind='stable')
  group_count = np.bincount(class_group)
  group_start = np.concatenate([[0], np.cumsum(group_count)[:-1]])
  class_rank = np.empty(num_classes, np.int64)
  class_rank[group_order] = np.arange(num_classes) - group_start[class_group[group_order]]
  pair_classes = np.flatnonzero(class_count >= 2)
  if num_classes < 2 or not len(pair_classes):
    raise UserError('pairs need at least two classes and one class with two or more images')
  arrays = dict(order=order, class_start=class_start, class_count=class_count, pair_classes=pair_classes,
                group_order=group_order, group_start=group_start, group_count=group_count,
                class_group=class_group, class_rank=class_rank)
  return ClassLayout(**{k: jnp.asarray(v, jnp.int32) for k, v in arrays.items()},
                     max_class_size=int(class_count.max()))


def _other(key, index, count):
  """A uniform draw from range(count) minus {index} (count >= 2)."""
  return (index + 1 + jax.random.randint(key, index.shape, 0, jnp.maximum(count - 1, 1))) % count


def sample_pairs(key, layout: ClassLayout, batch_size: int, positive_fraction: float = 0.5,
                 same_group_prob: float = 0.0):
  """Draws a batch of image-index pairs and their labels (1 = same class).

  Exactly round(batch_size * positive_fraction) pairs are positive, in random positions. A positive
  pair is two distinct images of a class drawn uniformly among classes with two or more images. A
  negative pair is two classes: the first uniform, the second from the same group with probability
  `same_group_prob` (the hard negatives of Omniglot: two characters of one alphabet) when its group has
  another class, else uniform among all other classes.

  Returns:
    indices int32 [batch_size, 2], labels int32 [batch_size].
  """
  k_label, k_pos_class, k_pos_a, k_pos_b, k_neg1, k_neg2, k_group, k_within, k_img1, k_img2 = (
      jax.random.split(key, 10))
  num_positive = int(round(batch_size * positive_fraction))
  labels = jax.random.permutation(k_label, (jnp.arange(batch_size) < num_positive).astype(jnp.int32))

  pos_class = layout.pair_classes[jax.random.randint(k_pos_class, (batch_size,), 0, layout.pair_classes.shape[0])]
  count = layout.class_count[pos_class]
  pos_a = jax.random.randint(k_pos_a, (batch_size,), 0, count)
  pos_b = _other(k_pos_b, pos_a, count)

  neg1 = jax.random.randint(k_neg1, (batch_size,), 0, layout.num_classes)
  anywhere = _other(k_neg2, neg1, layout.num_classes)
  group = layout.class_group[neg1]
  group_size = layout.group_count[group]
  within = layout.group_order[layout.group_start[group] + _other(k_within, layout.class_rank[neg1], group_size)]
  use_within = (jax.random.uniform(k_group, (batch_size,)) < same_group_prob) & (group_size >= 2)
  neg2 = jnp.where(use_within, within, anywhere)
  neg_a = jax.random.randint(k_img1, (batch_size,), 0, layout.class_count[neg1])
  neg_b = jax.random.randint(k_img2, (batch_size,), 0, layout.class_count[neg2])

  positive = labels == 1
  class_a = jnp.where(positive, pos_class, neg1)
  class_b = jnp.where(positive, pos_class, neg2)
  offset_a = jnp.where(positive, pos_a, neg_a)
  offset_b = jnp.where(positive, pos_b, neg_b)
  image_a = layout.order[layout.class_start[class_a] + offset_a]
  image_b = layout.order[layout.class_start[class_b] + offset_b]
  return jnp.stack([image_a, image_b], axis=1), labels


def sample_classes(key, layout: ClassLayout, num_classes: int, per_class: int, classes_per_group: int = 0):
  """An M-per-class batch: `num_classes` distinct classes, `per_class` images each.

  With `classes_per_group` > 0 the batch is num_classes / classes_per_group episodes, each of
  `classes_per_group` classes of one group (one alphabet: the near neighbours a within-alphabet test
  asks to tell apart). An episode's group is that of a uniformly drawn class, so every class is as
  likely to be trained on; a group with too few classes is filled up with classes of other groups.
  Images are distinct within a class when it has enough, else its images repeat.

  Returns:
    indices int32 [num_classes * per_class], labels int32 [num_classes * per_class] (class ids), in
    class-major order: the images of one class, and the classes of one episode, are adjacent.
  """
  k_classes, k_images = jax.random.split(key)
  if classes_per_group:
    classes = _classes_by_group(k_classes, layout, num_classes // classes_per_group, classes_per_group)
  else:
    classes = jax.random.choice(k_classes, layout.num_classes, (num_classes,), replace=False)
  count = layout.class_count[classes]
  slots = jnp.arange(layout.max_class_size)
  noise = jax.random.uniform(k_images, (num_classes, layout.max_class_size))
  # Rank each class's images at random and take the first `per_class`, cycling when the class is small.
  ranked = jnp.argsort(jnp.where(slots[None] < count[:, None], noise, 2.0), axis=1)
  offsets = jnp.take_along_axis(ranked, jnp.arange(per_class)[None] % count[:, None], axis=1)
  indices = layout.order[layout.class_start[classes][:, None] + offsets]
  labels = jnp.repeat(classes, per_class)
  return indices.reshape(-1), labels


def _classes_by_group(key, layout: ClassLayout, episodes: int, ways: int):
  """[episodes * ways] class ids, each episode's `ways` classes distinct and, where it can, of one group."""
  group_key, rank_key = jax.random.split(key)
  groups = layout.class_group[jax.random.randint(group_key, (episodes,), 0, layout.num_classes)]
  # Classes of the episode's group rank first (noise in [0, 1)), the others after them (in [1, 2)).
  noise = jax.random.uniform(rank_key, (episodes, layout.num_classes))
  priority = noise + (layout.class_group[None, :] != groups[:, None])
  return jax.lax.top_k(-priority, ways)[1].reshape(-1)
