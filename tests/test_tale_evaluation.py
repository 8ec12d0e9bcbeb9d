import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tale import evaluation as ev


def random_problem(seed, proteins=30, terms=20):
    rng = np.random.default_rng(seed)
    y_true = rng.random((proteins, terms)) < 0.3
    scores = np.clip(0.4 * y_true + 0.7 * rng.random((proteins, terms)), 0, 1)
    return y_true, scores, rng.random(terms) * 3


def test_fmax_on_a_hand_computed_case():
    y_true = np.array([[1, 1, 0, 0],
                       [1, 0, 1, 0],
                       [0, 0, 0, 1],
                       [0, 0, 0, 0]])  # no true term: dropped, else its four false positives would cut precision
    scores = np.array([[0.9, 0.4, 0.2, 0.0],
                       [0.7, 0.0, 0.9, 0.4],
                       [0.0, 0.1, 0.0, 0.0],
                       [0.9, 0.9, 0.9, 0.9]])
    # t in (0.7, 0.9]: p = (1/1 + 1/1) / 2 = 1,                 r = (1/2 + 1/2 + 0) / 3 = 1/3  -> F = 1/2
    # t in (0.4, 0.7]: p = (1/1 + 2/2) / 2 = 1,                 r = (1/2 + 1 + 0) / 3 = 1/2    -> F = 2/3
    # t in (0.2, 0.4]: p = (2/2 + 2/3) / 2 = 5/6 (protein 3 has no prediction), r = 2/3        -> F = 20/27, the max
    # t in (0.1, 0.2]: p = (2/3 + 2/3) / 2 = 2/3,               r = 2/3                        -> F = 2/3
    # t <= 0.1:        p = (2/3 + 2/3 + 0/1) / 3 = 4/9,         r = 2/3                        -> F = 8/15
    counts = ev.threshold_counts(y_true, scores)
    assert counts["tp"].shape == counts["predicted"].shape == (len(ev.THRESHOLDS), 3)
    fmax, threshold = ev.fmax_from_counts(counts)
    assert fmax == pytest.approx(20 / 27) and threshold == 0.21  # the lowest threshold of the best interval


def test_smin_on_a_hand_computed_case():
    y_true = np.array([[1, 1, 0, 0],
                       [1, 0, 1, 0]])
    scores = np.array([[0.8, 0.3, 0.6, 0.0],
                       [0.8, 0.0, 0.3, 0.6]])
    ic = np.array([0.5, 1.0, 2.0, 3.0])
    # t in (0.8, 1]:   ru = (1.5 + 2.5) / 2 = 2, mi = 0            -> S = 2
    # t in (0.6, 0.8]: ru = (1 + 2) / 2 = 1.5,   mi = 0            -> S = 1.5, the min
    # t in (0.3, 0.6]: ru = (1 + 2) / 2 = 1.5,   mi = (2 + 3) / 2  -> S = sqrt(1.5^2 + 2.5^2)
    # t <= 0.3:        ru = 0,                   mi = (2 + 3) / 2  -> S = 2.5
    counts = ev.threshold_counts(y_true, scores, ic=ic)
    assert counts["ru"][[0, 59, 79, 99], 0].tolist() == pytest.approx([0, 1, 1, 1.5])
    assert counts["mi"][[0, 59, 79, 99], 1].tolist() == pytest.approx([3, 3, 0, 0])
    smin, threshold = ev.smin_from_counts(counts)
    assert smin == pytest.approx(1.5) and threshold == 0.61
    with pytest.raises(ValueError, match="ic="):
        ev.smin_from_counts(ev.threshold_counts(y_true, scores))


@pytest.mark.parametrize("levels", [1000, 10])  # 10 levels: many ties
def test_micro_aupr_matches_sklearn(levels):
    y_true, scores, _ = random_problem(0)
    y_true[3] = False  # dropped by both
    quantised = np.round(scores * levels) / levels
    keep = y_true.any(1)
    expected = average_precision_score(y_true[keep].ravel(), quantised[keep].ravel())
    assert ev.micro_aupr_from_levels(ev.score_levels(y_true, scores, levels)) == pytest.approx(expected, abs=1e-9)


def test_micro_aupr_of_a_perfect_ranking_is_one():
    y_true, _, _ = random_problem(1)
    assert ev.micro_aupr_from_levels(ev.score_levels(y_true, 0.2 + 0.5 * y_true)) == 1.0


def test_information_content_on_a_toy_dag():
    # root -> a -> b, root -> c -> d, e has parents a and c
    parents = [[], [0], [1], [0], [3], [1, 3]]
    y_train = np.array([[1, 1, 1, 0, 0, 0],
                        [1, 1, 0, 0, 0, 0],
                        [1, 1, 0, 1, 0, 1],
                        [1, 1, 0, 1, 0, 0],
                        [1, 0, 0, 1, 0, 0],
                        [1, 0, 0, 0, 0, 0],
                        [0, 0, 0, 0, 0, 0],
                        [0, 0, 0, 0, 0, 0]])
    # root: 6 of 8 proteins; a: 4 of root's 6; b: 1 of a's 4; c: 3 of 6; d: never (IC 0); e: 1 of the 2 with a and c
    expected = [np.log2(8 / 6), np.log2(6 / 4), 2.0, 1.0, 0.0, 1.0]
    ic = ev.information_content(y_train, parents)
    assert ic.dtype == np.float64 and ic.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="propagated"):
        ev.information_content(y_train * [1, 0, 1, 1, 1, 1], parents)  # b without its parent a


def test_resample_index_equals_recounting_the_resampled_proteins():
    y_true, scores, ic = random_problem(2)
    index = np.random.default_rng(0).integers(0, len(y_true), len(y_true))
    counts, levels = ev.threshold_counts(y_true, scores, ic=ic), ev.score_levels(y_true, scores)
    recounted = ev.threshold_counts(y_true[index], scores[index], ic=ic)
    assert ev.fmax_from_counts(counts, index) == pytest.approx(ev.fmax_from_counts(recounted))
    assert ev.smin_from_counts(counts, index) == pytest.approx(ev.smin_from_counts(recounted))
    expected = ev.micro_aupr_from_levels(ev.score_levels(y_true[index], scores[index]))
    assert ev.micro_aupr_from_levels(levels, index) == pytest.approx(expected)
    every = np.arange(len(y_true))
    assert ev.fmax_from_counts(counts, every) == ev.fmax_from_counts(counts)
    assert ev.smin_from_counts(counts, every) == ev.smin_from_counts(counts)
    assert ev.micro_aupr_from_levels(levels, every) == ev.micro_aupr_from_levels(levels)


def test_evaluate_intervals_contain_the_point_estimates_and_follow_the_seed():
    y_true, scores, ic = random_problem(3)
    result = ev.evaluate(y_true, scores, ic, bootstrap=200)
    for metric in ("fmax", "aupr", "smin"):
        lo, hi = result[f"{metric}_ci"]
        assert lo <= result[metric] <= hi and lo < hi
    assert all(type(v) is float for k, v in result.items() if k != "proteins" and not k.endswith("_ci"))
    assert result == ev.evaluate(y_true, scores, ic, bootstrap=200)
    assert result["fmax_ci"] != ev.evaluate(y_true, scores, ic, bootstrap=200, seed=1)["fmax_ci"]
    assert result["proteins"] == y_true.any(1).sum()


def test_evaluate_perfect_scores():
    y_true, _, ic = random_problem(4)
    result = ev.evaluate(y_true, y_true.astype(float), ic, bootstrap=20)
    assert result["fmax"] == result["aupr"] == 1.0 and result["smin"] == 0.0
    assert result["fmax_ci"] == result["aupr_ci"] == [1.0, 1.0] and result["smin_ci"] == [0.0, 0.0]


def test_bootstrap_difference_is_paired():
    y_true, scores, ic = random_problem(5)
    better = ev.bootstrap_difference(y_true, y_true.astype(float), scores, ic, bootstrap=100)
    assert better["difference"] > 0 and better["ci"][0] > 0 and better["p_a_not_better"] == 0
    assert better["smin_difference"] < 0 and better["smin_p_a_not_better"] == 0
    same = ev.bootstrap_difference(y_true, scores, scores, bootstrap=100)
    assert same == {"difference": 0.0, "ci": [0.0, 0.0], "p_a_not_better": 1.0}


def test_bad_inputs_raise_clear_errors():
    y_true, scores, ic = random_problem(6)
    with pytest.raises(ValueError, match="same shape"):
        ev.threshold_counts(y_true, scores[:, :-1])
    with pytest.raises(ValueError, match="no protein with a true term"):
        ev.evaluate(np.zeros_like(y_true), scores, ic)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ev.score_levels(y_true, scores * 2)
    with pytest.raises(ValueError, match="one value per term"):
        ev.threshold_counts(y_true, scores, ic=ic[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmax_and_smin_agree_with_the_cafa_evaluator(seed):
    from tale import common, proteins

    go = proteins.Ontology(name="mf", ids=[f"GO:000000{i}" for i in range(6)], names=list("rabcde"),
                           parents=[[], [0], [1], [0], [3], [1, 3]],
                           ancestors=[[0], [0, 1], [0, 1, 2], [0, 3], [0, 3, 4], [0, 1, 3, 5]])
    rng = np.random.default_rng(seed)
    y_true = np.zeros((40, 6), dtype=bool)
    for row, leaf in zip(y_true, rng.integers(1, 6, 40)):
        row[go.ancestors[leaf]] = True
    scores = common.consistent(np.round(rng.random((40, 6)) * 0.98, 2) + 0.005, go)  # the evaluator stops at 0.99
    scores[:, 0] = 1.0
    ic = np.array([0.0, 0.4, 1.3, 0.6, 1.1, 2.0])
    ours = ev.evaluate(y_true, scores, ic, bootstrap=2, roots=[0])
    theirs = ev.cafa_evaluator(y_true, scores, go, ic)
    theirs_no_root = ev.cafa_evaluator(y_true, scores, go, roots=False)
    assert theirs["fmax"] == pytest.approx(ours["fmax"]) and theirs["smin"] == pytest.approx(ours["smin"])
    assert theirs_no_root["fmax"] == pytest.approx(ours["fmax_no_root"])
