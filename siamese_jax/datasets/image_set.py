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
    drawers: int32 [N] who drew each image (Omniglot), else None: Lake's one-shot runs take a run's
      support from one drawer and its queries from another.
  """

  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  class_names: tuple[str, ...]
  group_names: tuple[str, ...] = ('all',)
  source: str = ''
  drawers: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(f'images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}')
    if self.labels.shape != (n,) or self.groups.shape != (n,):
      raise ValueError('labels and groups must have one entry per image')
    if self.drawers is not None and self.drawers.shape != (n,):
      raise ValueError('drawers must have one entry per image')

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
        drawers=None if self.drawers is None else self.drawers[mask],
    )

  def with_symmetries_as_classes(self, quarter_turns: bool = True, mirror: bool = False) -> 'ImageSet':
    """Every image also turned by 90, 180 and 270 degrees and/or mirrored, each variant a class of its own.

    A turned character is a new character (Santoro et al. 2016; Vinyals et al. 2016): four (or eight)
    times the classes to learn from. A variant's group is its original group in that orientation, so a
    group still holds characters that are drawn alike.
    """
    if self.images.shape[1] != self.images.shape[2]:
      raise ValueError(f'symmetries as classes need square images, got {self.images.shape[1:3]}')
    variants = [(k, False) for k in (range(4) if quarter_turns else range(1))]
    if mirror:
      variants += [(k, True) for k, _ in variants]
    images = [np.rot90(np.flip(self.images, 2) if flip else self.images, k, axes=(1, 2)) for k, flip in variants]
    names = [f'rot{90 * k}' + ('_mirror' if flip else '') for k, flip in variants]
    count = len(variants)
    return ImageSet(
        images=np.ascontiguousarray(np.concatenate(images)),
        labels=np.concatenate([self.labels + v * self.num_classes for v in range(count)]).astype(np.int32),
        groups=np.concatenate([self.groups + v * len(self.group_names) for v in range(count)]).astype(np.int32),
        class_names=tuple(f'{c}@{n}' for n in names for c in self.class_names),
        group_names=tuple(f'{g}@{n}' for n in names for g in self.group_names),
        source=f'{self.source}, {" ".join(names)} as classes' if count > 1 else self.source,
        drawers=None if self.drawers is None else np.tile(self.drawers, count),
    )
