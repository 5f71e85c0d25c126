"""The in-memory form every dataset is loaded into, whatever its source."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """One split of a dataset held in host memory.

  Attributes:
    images: uint8 [N, H, W, C]; background is 0 (Omniglot is inverted on load so that strokes are
      bright and padding from an affine warp is background).
    labels: int32 [N], the class of each image, dense in [0, num_classes).
    groups: int32 [N], the group of each image's class (Omniglot: the alphabet), dense in
      [0, num_groups); all zeros for datasets without groups.
    class_names: name of each class id.
    group_names: name of each group id.
    source: a short description of where the images came from (which copy of the data), reported
      beside every result on them.
  """

  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  class_names: tuple[str, ...]
  group_names: tuple[str, ...] = ('all',)
  source: str = ''

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(f'images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}')
    if self.labels.shape != (n,) or self.groups.shape != (n,):
      raise ValueError('labels and groups must have one entry per image')

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def subset(self, mask: np.ndarray) -> 'ImageSet':
    """The images where `mask` holds, with class and group ids re-densified."""
    labels = self.labels[mask]
    groups = self.groups[mask]
    kept_classes, new_labels = np.unique(labels, return_inverse=True)
    kept_groups, new_groups = np.unique(groups, return_inverse=True)
    return ImageSet(
        images=self.images[mask],
        labels=new_labels.astype(np.int32),
        groups=new_groups.astype(np.int32),
        class_names=tuple(self.class_names[c] for c in kept_classes),
        group_names=tuple(self.group_names[g] for g in kept_groups),
        source=self.source,
    )
