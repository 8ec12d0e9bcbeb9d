import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from mlkit import metrics as ours
from mlkit.metrics import accuracy, balanced_accuracy, confusion_matrix, macro_f1, mean_std, per_class_recall


def random_labels(seed, n=60, num_classes=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)


def class_never_predicted(seed):
    y_true, y_pred = random_labels(seed)
    y_pred[y_pred == 2] = 0
    assert 2 in y_true
    return y_true, y_pred


def prediction_absent_from_truth(seed):
    y_true, y_pred = random_labels(seed, num_classes=3)
    y_pred[:5] = 3
    return y_true, y_pred


def label_absent_from_both(seed):
    y_true, y_pred = random_labels(seed, num_classes=3)
    return y_true * 2, y_pred * 2


CASES = {
    "random-0": random_labels(0),
    "random-1": random_labels(1),
    "binary": random_labels(2, num_classes=2),
    "perfect": (np.arange(12) % 3, np.arange(12) % 3),
    "class-never-predicted": class_never_predicted(3),
    "prediction-absent-from-truth": prediction_absent_from_truth(4),
    "label-absent-from-both": label_absent_from_both(5),
}

pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


@pytest.fixture(params=CASES.values(), ids=CASES.keys())
def labels(request):
    return request.param


def test_accuracy_matches_sklearn(labels):
    assert accuracy(*labels) == pytest.approx(sk.accuracy_score(*labels))


def test_balanced_accuracy_matches_sklearn(labels):
    assert balanced_accuracy(*labels) == pytest.approx(sk.balanced_accuracy_score(*labels))


def test_macro_f1_matches_sklearn(labels):
    assert macro_f1(*labels) == pytest.approx(sk.f1_score(*labels, average="macro", zero_division=0))


def test_confusion_matrix_matches_sklearn(labels):
    y_true, y_pred = labels
    num_classes = max(y_true.max(), y_pred.max()) + 1
    expected = sk.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), expected)


def test_per_class_recall_covers_classes_in_y_true(labels):
    y_true, y_pred = labels
    expected = sk.recall_score(y_true, y_pred, labels=np.unique(y_true), average=None)
    np.testing.assert_allclose(per_class_recall(y_true, y_pred), expected)


def test_tensors_give_the_same_results_as_arrays():
    y_true, y_pred = CASES["class-never-predicted"]
    tensors = torch.from_numpy(y_true), torch.from_numpy(y_pred)
    assert accuracy(*tensors) == accuracy(y_true, y_pred)
    assert balanced_accuracy(*tensors) == balanced_accuracy(y_true, y_pred)
    assert macro_f1(*tensors) == macro_f1(y_true, y_pred)
    np.testing.assert_array_equal(confusion_matrix(*tensors), confusion_matrix(y_true, y_pred))
    np.testing.assert_array_equal(per_class_recall(*tensors), per_class_recall(y_true, y_pred))


def test_confusion_matrix_pads_to_num_classes():
    cm = confusion_matrix([0, 1, 1], [1, 1, 0], num_classes=4)
    assert cm.shape == (4, 4)
    assert cm.sum() == 3
    assert cm[2:].sum() == cm[:, 2:].sum() == 0


@pytest.mark.parametrize("metric", [accuracy, balanced_accuracy, macro_f1, confusion_matrix, per_class_recall])
@pytest.mark.parametrize("y_pred", [[0, 1], [1]], ids=["shorter", "single"])
def test_length_mismatch_raises(metric, y_pred):
    with pytest.raises(ValueError, match="differ in length"):
        metric([0, 1, 1], y_pred)


def test_mean_std_matches_numpy_sample_std():
    values = np.random.default_rng(0).normal(size=7)
    mean, std = mean_std(values)
    assert mean == pytest.approx(values.mean())
    assert std == pytest.approx(values.std(ddof=1))


def test_mean_std_of_single_value_has_zero_std():
    assert mean_std([0.8]) == (0.8, 0.0)


def test_wilson_interval_matches_the_textbook_value():
    low, high = ours.wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)


def test_mcnemar_counts_only_the_disagreements_and_matches_the_binomial_test():
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.9
    b = a.copy()
    b[np.where(a)[0][:14]] = False  # b loses 14 that a wins
    b[np.where(~a)[0][:4]] = True  # and wins 4 that a loses
    assert ours.mcnemar_p_value(a, b) == pytest.approx(binomtest(4, 18, 0.5).pvalue)
    assert ours.mcnemar_p_value(a, b) == ours.mcnemar_p_value(b, a)
    assert ours.mcnemar_p_value(a, a) == 1.0  # no disagreement, no evidence
    with pytest.raises(ValueError, match="differ in length"):
        ours.mcnemar_p_value(a, b[:-1])


@pytest.mark.parametrize("seed", range(3))
def test_expected_calibration_error_matches_scikit_learns_calibration_curve(seed):
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(5, 0.5), 400)
    y_true = rng.integers(0, 5, 400)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == y_true
    fraction_correct, mean_confidence = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, 16))[0]
    expected = (np.abs(fraction_correct - mean_confidence) * counts[counts > 0]).sum() / len(y_true)
    assert ours.expected_calibration_error(probabilities, y_true) == pytest.approx(expected)


def test_expected_calibration_error_is_zero_when_confidence_is_accuracy_and_checks_lengths():
    probabilities = np.tile([0.75, 0.25], (8, 1))
    y_true = np.array([0, 0, 0, 1, 0, 0, 0, 1])  # 75% right at 75% confidence
    assert ours.expected_calibration_error(probabilities, y_true) == pytest.approx(0.0)
    assert ours.expected_calibration_error(np.tile([1.0, 0.0], (4, 1)), [1, 1, 1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        ours.expected_calibration_error(probabilities, y_true[:3])
