"""Verification metrics on pair scores, and confidence intervals for episode accuracies.

Scores follow one convention everywhere: higher means more similar (negate a distance before
passing it in), and a pair is predicted "same" when its score is >= the threshold. Labels are 1
for a same-class pair and 0 otherwise.
"""

from __future__ import annotations

import numpy as np


def _validate(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  """float64 scores and bool labels of equal 1-D shape, with both kinds of pair present."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.ndim != 1 or scores.shape != labels.shape:
    raise ValueError(f'scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}')
  if not np.isin(labels, (0, 1)).all():
    raise ValueError('labels must be 0 (different) or 1 (same)')
  labels = labels.astype(bool)
  if labels.all() or not labels.any():
    raise ValueError('need both same (1) and different (0) pairs')
  return scores, labels


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of values, tied values sharing the mean of the ranks they span."""
  _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  starts = np.cumsum(counts) - counts
  return (starts + (counts + 1) / 2)[inverse]


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve: the chance that a random same pair outscores a different one.

  Computed from ranks (Mann-Whitney U); a tie between a same and a different pair counts 1/2.
  """
  scores, labels = _validate(scores, labels)
  n_pos = labels.sum()
  n_neg = len(labels) - n_pos
  u = _average_ranks(scores)[labels].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def _operating_points(scores: np.ndarray, labels: np.ndarray):
  """True and false positive counts at each distinct score taken as threshold, high to low."""
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
  tps = np.cumsum(labels)[last_of_tie]
  fps = last_of_tie + 1 - tps
  return tps, fps, scores[last_of_tie]


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC curve as (fpr, tpr, thresholds), thresholds descending from +inf (nothing accepted)."""
  scores, labels = _validate(scores, labels)
  tps, fps, thresholds = _operating_points(scores, labels)
  tpr = np.r_[0, tps] / labels.sum()
  fpr = np.r_[0, fps] / (~labels).sum()
  return fpr, tpr, np.r_[np.inf, thresholds]


def equal_error_rate(scores, labels) -> float:
  """The error rate where false positive and false negative rates are equal.

  Linearly interpolated between the two ROC points where FPR - FNR changes sign; it always does,
  from -1 with nothing accepted to +1 with everything accepted.
  """
  fpr, tpr, _ = roc_curve(scores, labels)
  gap = fpr - (1 - tpr)
  i = np.argmax(gap >= 0)
  t = gap[i - 1] / (gap[i - 1] - gap[i])
  return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def best_threshold(scores, labels) -> float:
  """The threshold that maximises accuracy on these (validation) scores.

  Choose it on validation pairs and apply it to test pairs with `accuracy_at`; a fixed 0.5 only
  suits a calibrated probability, never a distance. Returned halfway between neighbouring
  distinct scores, so that unseen scores near the boundary are not decided by an exact tie; +inf
  or -inf when rejecting or accepting every pair is best.
  """
  scores, labels = _validate(scores, labels)
  tps, fps, thresholds = _operating_points(scores, labels)
  n_neg = (~labels).sum()
  correct = np.r_[n_neg, tps + n_neg - fps]  # First entry: reject everything.
  best = int(np.argmax(correct))
  bounds = np.r_[np.inf, thresholds, -np.inf]
  return float((bounds[best] + bounds[best + 1]) / 2)  # inf stays inf: never both infinite.


def accuracy_at(scores, labels, threshold: float) -> float:
  """Fraction of pairs classified correctly when a score >= threshold means "same"."""
  scores, labels = _validate(scores, labels)
  return float(np.mean((scores >= threshold) == labels))


def verification_report(val_scores, val_labels, test_scores, test_labels) -> dict[str, float]:
  """Test accuracy at the threshold chosen on validation, with the test set's AUC and EER."""
  threshold = best_threshold(val_scores, val_labels)
  return {
      'accuracy': accuracy_at(test_scores, test_labels, threshold),
      'threshold': threshold,
      'auc': roc_auc(test_scores, test_labels),
      'eer': equal_error_rate(test_scores, test_labels),
  }


def mean_and_ci95(values) -> tuple[float, float]:
  """Mean and half-width of its 95% normal confidence interval (1.96 standard errors).

  Used for accuracies over one-shot episodes, which are reported as mean ± half-width. The
  half-width is NaN for a single value, whose spread is unknown.
  """
  values = np.asarray(values, np.float64).ravel()
  if not len(values):
    raise ValueError('need at least one value')
  half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
  return float(values.mean()), float(half_width)
