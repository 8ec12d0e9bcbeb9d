"""Classification metrics on integer labels (NumPy arrays or tensors), checked against scikit-learn in the tests."""
import math

import numpy as np


def _as_array(values) -> np.ndarray:
    return np.asarray(values.cpu() if hasattr(values, "cpu") else values).ravel()


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _as_array(y_true), _as_array(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    return y_true, y_pred


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    y_true, y_pred = _paired(y_true, y_pred)
    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    num_classes = num_classes or int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _paired(y_true, y_pred)
    return float((y_true == y_pred).mean())


def per_class_recall(y_true, y_pred) -> np.ndarray:
    """Recall of every class present in `y_true` (classes absent from it are dropped)."""
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(1)
    return np.diag(cm)[support > 0] / support[support > 0]


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in `y_true` (scikit-learn's definition)."""
    return float(per_class_recall(y_true, y_pred).mean())


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean F1 over every class seen in either array; 0 where precision+recall is 0."""
    cm = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(float)
    denominator = cm.sum(0) + cm.sum(1)  # 2*TP + FP + FN
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[denominator > 0].mean())


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar_p_value(correct_a, correct_b) -> float:
    """Exact two-sided McNemar test of two classifiers scored on the same examples: only the examples that
    exactly one of them gets right count, and under "equally good" each such example is a fair coin."""
    a, b = _paired(np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool))
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def expected_calibration_error(probabilities, y_true, bins: int = 15) -> float:
    """Expected calibration error: the gap between confidence (top probability) and accuracy, averaged over
    `bins` equal-width confidence bins weighted by their share of the examples."""
    probabilities = np.asarray(probabilities.cpu() if hasattr(probabilities, "cpu") else probabilities, dtype=float)
    y_true = _as_array(y_true)
    if len(probabilities) != len(y_true):
        raise ValueError(f"probabilities and y_true differ in length: {len(probabilities)} vs {len(y_true)}")
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == y_true
    bin_of = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = sum(abs(correct[bin_of == b].mean() - confidence[bin_of == b].mean()) * (bin_of == b).sum()
              for b in range(bins) if (bin_of == b).any())
    return float(gap / len(y_true))
