"""Verification metrics against brute-force counting and hand-worked cases."""

import math

import numpy as np
import pytest

from siamese_jax import metrics


def random_pairs(seed, n=60):
  """Scores rounded to one decimal so that many same and different pairs tie."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  scores = np.round(rng.normal(size=n) + labels, 1)
  return scores, labels


def ref_auc(scores, labels):
  pos, neg = scores[labels == 1], scores[labels == 0]
  return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


@pytest.mark.parametrize('seed', range(3))
def test_auc_matches_pair_counting_with_ties(seed):
  scores, labels = random_pairs(seed)
  assert metrics.roc_auc(scores, labels) == pytest.approx(ref_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize(
    'scores, auc, eer',
    [
        ([0.9, 0.8, 0.2, 0.1], 1.0, 0.0),  # Perfectly separated.
        ([0.1, 0.2, 0.8, 0.9], 0.0, 1.0),  # Reversed.
        ([0.5, 0.5, 0.5, 0.5], 0.5, 0.5),  # Constant.
    ],
)
def test_known_auc_and_eer(scores, auc, eer):
  labels = [1, 1, 0, 0]
  assert metrics.roc_auc(scores, labels) == pytest.approx(auc)
  assert metrics.equal_error_rate(scores, labels) == pytest.approx(eer)


@pytest.mark.parametrize('seed', range(3))
def test_roc_curve_matches_counting_at_each_threshold(seed):
  scores, labels = random_pairs(seed)
  fpr, tpr, thresholds = metrics.roc_curve(scores, labels)
  assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
  assert np.all(np.diff(thresholds) < 0)
  np.testing.assert_array_equal(thresholds[1:], np.unique(scores)[::-1])
  for f, t, threshold in zip(fpr, tpr, thresholds):
    accepted = scores >= threshold
    assert f == np.mean(accepted[labels == 0]) and t == np.mean(accepted[labels == 1])
  # Ties make diagonal segments, so the trapezoid area is the tie-aware AUC.
  area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
  assert area == pytest.approx(metrics.roc_auc(scores, labels))


def test_eer_interpolates_between_roc_points():
  # ROC: (0, 1/3) then (1/2, 1/3); FNR stays 1/3 while FPR sweeps past it.
  scores = [0.9, 0.8, 0.5, 0.7, 0.3]
  labels = [1, 1, 1, 0, 0]
  assert metrics.equal_error_rate(scores, labels) == pytest.approx(1 / 3)


@pytest.mark.parametrize('seed', range(3))
def test_best_threshold_reaches_brute_force_best_accuracy(seed):
  scores, labels = random_pairs(seed)
  best = max(np.mean((scores >= t) == labels) for t in np.r_[np.unique(scores), np.inf])
  threshold = metrics.best_threshold(scores, labels)
  assert metrics.accuracy_at(scores, labels, threshold) == pytest.approx(best)
  assert not np.any(scores == threshold)  # Halfway between scores, never on one.


def test_best_threshold_for_negated_distances():
  distances = np.array([0.2, 0.4, 1.1, 1.5])  # Same pairs are close.
  threshold = metrics.best_threshold(-distances, [1, 1, 0, 0])
  assert threshold == pytest.approx(-0.75)
  assert metrics.accuracy_at(-np.array([0.7, 0.8]), [1, 0], threshold) == 1.0


def test_best_threshold_infinite_when_one_answer_fits_all():
  # Accepting everything gets 3 of 4 right, every finite cut fewer.
  assert metrics.best_threshold([0.1, 0.5, 0.9, 0.3], [1, 0, 1, 1]) == -np.inf


def test_verification_report_uses_validation_threshold():
  report = metrics.verification_report(
      val_scores=[0.9, 0.7, 0.5, 0.1], val_labels=[1, 1, 0, 0],
      test_scores=[0.65, 0.62, 0.61, 0.2], test_labels=[1, 0, 1, 0],
  )
  assert report['threshold'] == pytest.approx(0.6)
  assert report['accuracy'] == pytest.approx(0.75)  # Only the different pair at 0.62 is accepted.
  assert report['auc'] == pytest.approx(0.75)  # Only (0.61 same, 0.62 different) is misordered.
  # Test ROC, lowering the threshold: (FPR, TPR) = (0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1). FPR = FNR
  # at (0.5, 0.5), after 0.62 is accepted and before 0.61 is: the equal error rate is 0.5.
  assert report['eer'] == pytest.approx(0.5)
  assert set(report) == {'accuracy', 'threshold', 'auc', 'eer'}


def test_mean_and_ci95():
  mean, half_width = metrics.mean_and_ci95([0.0, 1.0, 0.0, 1.0])
  assert mean == 0.5
  assert half_width == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
  assert math.isnan(metrics.mean_and_ci95([0.7])[1])


@pytest.mark.parametrize(
    'scores, labels, message',
    [
        ([0.1, 0.2], [1, 1], 'both'),
        ([0.1, 0.2], [1, 2], '0 .different. or 1'),
        ([0.1, 0.2], [1, 0, 1], '1-D of equal length'),
    ],
)
def test_rejects_bad_inputs(scores, labels, message):
  with pytest.raises(ValueError, match=message):
    metrics.roc_auc(scores, labels)
