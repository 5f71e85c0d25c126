"""PyTorch versions of the project's towers, heads and losses: the reference side of `cpu_step`.

Only the benchmark imports this (PyTorch comes with the `benchmark` extra, never with the package). Each
module mirrors its Flax namesake in `siamese_jax/models.py` layer for layer, so both sides do the same
arithmetic; initialisation is PyTorch's own, which does not change the cost of a step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_blocks(features, embedding_dim: int, norm_groups: int, final_pool: str, image_size: int) -> nn.Sequential:
  layers, channels, size = [], 1, image_size
  for i, width in enumerate(features):
    layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not norm_groups))
    if norm_groups:
      layers.append(nn.GroupNorm(norm_groups, width, eps=1e-6))  # Flax's epsilon
    layers.append(nn.ReLU())
    if i < len(features) - 1 or final_pool == '2x2':
      layers.append(nn.MaxPool2d(2))
      size //= 2
    else:
      layers.append(nn.AdaptiveMaxPool2d(1) if final_pool == 'max' else nn.AdaptiveAvgPool2d(1))
      size = 1
    channels = width
  layers.append(nn.Flatten())
  if embedding_dim:
    layers.append(nn.Linear(channels * size * size, embedding_dim))
  return nn.Sequential(*layers)


def conv_tower(features, kernel_sizes, embedding_dim: int, koch: bool, image_size: int) -> nn.Sequential:
  layers, channels, size = [], 1, image_size
  for i, (width, kernel) in enumerate(zip(features, kernel_sizes)):
    layers += [nn.Conv2d(channels, width, kernel), nn.ReLU()]
    channels, size = width, size - kernel + 1
    if i < len(features) - 1:
      layers.append(nn.MaxPool2d(2))
      size //= 2
  layers += [nn.Flatten(), nn.Linear(channels * size * size, embedding_dim)]
  if koch:
    layers.append(nn.Sigmoid())
  return nn.Sequential(*layers)


class Siamese(nn.Module):

  def __init__(self, encoder: nn.Module, head: str, embedding_dim: int):
    super().__init__()
    self.encoder = encoder
    self.head = head
    self.weights = nn.Linear(embedding_dim, 1) if head == 'weighted_l1' else None

  def similarity(self, e1, e2):
    """Higher = more alike, as `models.similarity` of the Flax head's output."""
    if self.head == 'weighted_l1':
      return self.weights((e1 - e2).abs())[..., 0]
    if self.head == 'euclidean':
      return -((e1 - e2) ** 2).sum(-1).clamp_min(1e-12).sqrt()
    return F.cosine_similarity(e1, e2, dim=-1) - 1.0


def build(config) -> Siamese:
  m, size = config.model, config.data.image_size
  if m.encoder == 'conv_blocks':
    encoder = conv_blocks(m.features, m.embedding_dim, m.norm_groups, m.final_pool, size)
    with torch.no_grad():
      dim = encoder(torch.zeros(1, 1, size, size)).shape[-1]
  elif m.encoder == 'conv_tower':
    encoder, dim = conv_tower(m.features, m.kernel_sizes, m.embedding_dim, m.koch, size), m.embedding_dim
  else:
    raise ValueError(f'no PyTorch reference for model.encoder={m.encoder!r}')
  return Siamese(encoder, m.head, dim)


def loss(network: Siamese, config, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  """The config's loss on one batch of images [N, 1, H, W] (pairs adjacent, or class-major episodes)."""
  embeddings = network.encoder(images)
  if config.loss.name == 'bce':
    pairs = embeddings.reshape(-1, 2, embeddings.shape[-1])
    logits = network.similarity(pairs[:, 0], pairs[:, 1])
    return F.binary_cross_entropy_with_logits(logits, labels.float())
  if config.loss.name != 'episodic':
    raise ValueError(f'no PyTorch reference for loss.name={config.loss.name!r}')
  batch = config.batch
  ways = batch.classes_per_group or batch.size // batch.images_per_class
  shots = config.loss.shots
  grouped = embeddings.reshape(-1, ways, batch.images_per_class, embeddings.shape[-1])
  support = grouped[:, :, :shots]  # [E, W, K, D]
  queries = grouped[:, :, shots:].reshape(grouped.shape[0], -1, 1, 1, grouped.shape[-1])
  scores = network.similarity(queries, support[:, None]).mean(-1)  # [E, W * Q, W]
  targets = torch.arange(ways).repeat_interleave(batch.images_per_class - shots).expand(scores.shape[:2])
  logits = scores / config.loss.temperature
  loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
  if config.loss.symmetric:  # one query per class (validated): the transposed scores are W-way too
    loss = (loss + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), targets.flatten())) / 2
  return loss
