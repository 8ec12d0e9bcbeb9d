"""tale/evaluation.py: protein function prediction metrics as CAFA defines them (protein-centric Fmax, Smin,
micro AUPR), their bootstrap confidence intervals and the information content of GO terms.

Every metric takes `y_true` [proteins, terms] (bool or 0/1, propagated to ancestors) and `scores` [proteins, terms]
in [0, 1]; proteins with no true term are dropped first. Counts are taken once, per protein, so that a bootstrap
resample of proteins only re-weights them."""
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
from cafaeval.evaluation import cafa_eval

THRESHOLDS = np.round(np.arange(0.01, 1.001, 0.01), 2)  # a term is predicted at threshold t when its score >= t
CHUNK = 2**20  # matrix entries per chunk of proteins: bounds the temporaries at a few MB whatever the number of terms


# ---------------------------------------------------------------- counts

def _validate(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Checked `y_true` (bool) and `scores`, without the proteins that have no true term."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must have the same shape [proteins, terms]")
    if y_true.dtype != bool and not ((y_true == 0) | (y_true == 1)).all():
        raise ValueError("y_true must be boolean or 0/1")
    if not ((scores >= 0) & (scores <= 1)).all():  # NaN fails too
        raise ValueError("scores must lie in [0, 1]")
    keep = (y_true != 0).any(1)
    if not keep.any():
        raise ValueError("y_true has no protein with a true term")
    return y_true[keep] != 0, scores[keep]


def _histograms(y_true: np.ndarray, scores: np.ndarray, to_bins, n_bins: int, ic=None) -> dict[str, np.ndarray]:
    """Per-protein histograms [proteins, n_bins] of the bins `to_bins(scores)`: counts of `all` and of `true` terms and,
    with `ic`, the IC summed over the true (`true_ic`) and the false (`false_ic`) terms of each bin."""
    hist = {}
    rows = max(1, CHUNK // scores.shape[1])
    for start in range(0, len(scores), rows):
        chunk = slice(start, start + rows)
        y = y_true[chunk]
        flat = (np.arange(len(y))[:, None] * n_bins + to_bins(scores[chunk])).ravel()  # (protein in chunk, bin)
        weights = {"all": np.ones(y.shape), "true": y}
        if ic is not None:
            weights |= {"true_ic": y * ic, "false_ic": ~y * ic}
        for key, w in weights.items():
            counts = np.bincount(flat, w.ravel(), minlength=len(y) * n_bins).reshape(len(y), n_bins)
            hist.setdefault(key, np.zeros((len(scores), n_bins)))[chunk] = counts
    return hist


def threshold_counts(y_true, scores, thresholds=THRESHOLDS, *, ic=None) -> dict[str, np.ndarray]:
    """Per-threshold, per-protein counts [thresholds, proteins]: `tp`, `predicted`, with `ic` also `ru` and `mi`;
    `true` [proteins] and the `thresholds` (increasing) they were taken at."""
    y_true, scores = _validate(y_true, scores)
    thresholds = np.asarray(thresholds, dtype=float)
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    ic = None if ic is None else np.asarray(ic, dtype=float)
    if ic is not None and ic.shape != (y_true.shape[1],):
        raise ValueError(f"ic has shape {ic.shape}, expected one value per term ({y_true.shape[1]},)")
    # bin b = how many thresholds are <= the score: the term is predicted at thresholds[:b], so at thresholds[i]
    # the predicted terms are those in bins > i and the missed ones those in bins <= i
    to_bins = lambda s: np.searchsorted(thresholds, s, side="right")
    hist = _histograms(y_true, scores, to_bins, len(thresholds) + 1, ic)
    above = lambda h: np.cumsum(h[:, ::-1], axis=1)[:, ::-1][:, 1:].T
    below = lambda h: np.cumsum(h, axis=1)[:, :-1].T
    counts = {"thresholds": thresholds, "tp": above(hist["true"]), "predicted": above(hist["all"]),
              "true": y_true.sum(1)}
    if ic is not None:
        counts |= {"ru": below(hist["true_ic"]), "mi": above(hist["false_ic"])}
    return counts


def score_levels(y_true, scores, levels=1000) -> dict[str, np.ndarray]:
    """Per-protein histograms [proteins, levels + 1] of the scores quantised to `round(scores * levels) / levels`:
    `true` counts the true terms at each level, `all` every term."""
    y_true, scores = _validate(y_true, scores)
    return _histograms(y_true, scores, lambda s: np.round(s * levels).astype(np.int64), levels + 1)


# ---------------------------------------------------------------- metrics

def _weights(index, n: int) -> np.ndarray:
    """How often each of the n proteins is drawn in `index` (all once when None): means over a resample are weighted."""
    return np.ones(n) if index is None else np.bincount(index, minlength=n).astype(float)


def precision_recall(counts: dict, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Protein-centric precision and recall at every threshold, over the proteins `index` (repeats allowed) or all."""
    w = _weights(index, len(counts["true"]))
    tp, predicted = counts["tp"], counts["predicted"]
    covered = (predicted > 0) @ w  # precision averages over the proteins with a prediction only
    precision = np.divide((tp / np.maximum(predicted, 1)) @ w, covered, out=np.zeros(len(tp)), where=covered > 0)
    return precision, (tp / counts["true"]) @ w / w.sum()


def fmax_from_counts(counts: dict, index=None) -> tuple[float, float]:
    """CAFA protein-centric Fmax and its threshold, over the proteins `index` (repeats allowed) or all of them."""
    precision, recall = precision_recall(counts, index)
    # a threshold where nothing is predicted gets F = 0, which never beats one where something is
    f = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(recall)), where=precision + recall > 0)
    best = np.argmax(f)
    return float(f[best]), float(counts["thresholds"][best])


def smin_from_counts(counts: dict, index=None) -> tuple[float, float]:
    """CAFA Smin = min over thresholds of sqrt(mean ru^2 + mean mi^2), and its threshold; `index` as in Fmax."""
    if "ru" not in counts:
        raise ValueError("Smin needs the IC counts: call threshold_counts(..., ic=ic)")
    w = _weights(index, len(counts["true"]))
    s = np.hypot(counts["ru"] @ w, counts["mi"] @ w) / w.sum()
    best = np.argmin(s)
    return float(s[best]), float(counts["thresholds"][best])


def micro_aupr_from_levels(levels_counts: dict, index=None) -> float:
    """Micro-averaged average precision over all (protein, term) pairs, as sklearn's average_precision_score."""
    w = _weights(index, len(levels_counts["all"]))
    true, total = (w @ levels_counts["true"])[::-1], (w @ levels_counts["all"])[::-1]  # highest level first
    # each level is one threshold (ties together): AP = sum_k (R_k - R_{k-1}) P_k, where R_k - R_{k-1} = true_k / tp[-1]
    tp, predicted = np.cumsum(true), np.cumsum(total)
    return float(np.sum(true / tp[-1] * tp / np.maximum(predicted, 1)))


def information_content(y_true_train, parents: list[list[int]]) -> np.ndarray:
    """IC(t) = -log2 P(t | all parents of t) from propagated training annotations [proteins, terms] (Clark & Radivojac);
    a root's parents are all proteins, and a term never annotated gets IC 0."""
    y = np.asarray(y_true_train) != 0
    if len(parents) != y.shape[1]:
        raise ValueError(f"{len(parents)} parent lists for {y.shape[1]} terms")
    annotated = y.sum(0)
    with_parents = np.array([y[:, p].all(1).sum() if p else len(y) for p in parents])
    if np.any(annotated > with_parents):
        raise ValueError("y_true_train must be propagated to ancestors: a term is more frequent than its parents")
    ic = np.zeros(len(parents))
    seen = annotated > 0
    ic[seen] = np.log2(with_parents[seen] / annotated[seen])
    return ic


# ---------------------------------------------------------------- bootstrap

def _resamples(n: int, bootstrap: int, seed: int) -> np.ndarray:
    """`bootstrap` resamples [bootstrap, n] of n proteins with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))


def _ci(values) -> list[float]:
    """The 2.5 and 97.5 percentiles."""
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def evaluate(y_true, scores, ic, bootstrap=1000, seed=0, roots=None) -> dict:
    """Fmax, micro AUPR and Smin with their thresholds and 95% bootstrap intervals over resampled proteins; with
    `roots` (term indices) also `fmax_no_root`, Fmax over the other terms (the convention of the CAFA evaluator,
    where the root, on every protein, is not counted)."""
    extra = {}
    if roots is not None:
        others = np.setdiff1d(np.arange(np.shape(y_true)[1]), roots)
        extra["fmax_no_root"] = fmax_from_counts(threshold_counts(np.asarray(y_true)[:, others],
                                                                  np.asarray(scores)[:, others]))[0]
    counts, levels = threshold_counts(y_true, scores, ic=ic), score_levels(y_true, scores)
    n = len(counts["true"])
    fmax, fmax_threshold = fmax_from_counts(counts)
    smin, smin_threshold = smin_from_counts(counts)
    resamples = _resamples(n, bootstrap, seed)
    fmaxes = [fmax_from_counts(counts, i)[0] for i in resamples]
    auprs = [micro_aupr_from_levels(levels, i) for i in resamples]
    smins = [smin_from_counts(counts, i)[0] for i in resamples]
    return {"fmax": fmax, "fmax_ci": _ci(fmaxes), "fmax_threshold": fmax_threshold,
            "aupr": micro_aupr_from_levels(levels), "aupr_ci": _ci(auprs),
            "smin": smin, "smin_ci": _ci(smins), "smin_threshold": smin_threshold, "proteins": n} | extra


def bootstrap_difference(y_true, scores_a, scores_b, ic=None, bootstrap=1000, seed=0) -> dict:
    """Paired bootstrap of Fmax(a) - Fmax(b) over the same protein resamples; with `ic` also of Smin(a) - Smin(b)
    (`smin_` keys; lower is better there)."""
    a, b = threshold_counts(y_true, scores_a, ic=ic), threshold_counts(y_true, scores_b, ic=ic)
    resamples = _resamples(len(a["true"]), bootstrap, seed)
    diff = lambda metric, i=None: metric(a, i)[0] - metric(b, i)[0]
    fmax = np.array([diff(fmax_from_counts, i) for i in resamples])
    out = {"difference": float(diff(fmax_from_counts)), "ci": _ci(fmax), "p_a_not_better": float(np.mean(fmax <= 0))}
    if ic is not None:
        smin = np.array([diff(smin_from_counts, i) for i in resamples])
        out |= {"smin_difference": float(diff(smin_from_counts)), "smin_ci": _ci(smin),
                "smin_p_a_not_better": float(np.mean(smin >= 0))}
    return out


# ---------------------------------------------------------------- the field's own evaluator

NAMESPACES = {"mf": "molecular_function", "cc": "cellular_component", "bp": "biological_process"}


def cafa_evaluator(y_true, scores, go, ic=None, roots: bool = True) -> dict:
    """Fmax (and, with `ic`, Smin) of `scores` by the CAFA evaluator (PyPI `cafaeval`, Piovesan et al. 2024) on the
    same proteins and ontology (`go`, written out as OBO with its parent lists as is_a), to check ours against it.
    `roots=False` is its `-no_orphans`: the root terms are not evaluated. Its thresholds are 0.01..0.99 (ours end at
    1.00); scores below 0.01 are left out of the prediction file (no threshold sees them)."""
    y_true, scores = _validate(y_true, scores)
    namespace = NAMESPACES.get(go.name, go.name)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "go.obo", "w") as f:
            for term, (term_id, name) in enumerate(zip(go.ids, go.names)):
                f.write(f"[Term]\nid: {term_id}\nname: {name}\nnamespace: {namespace}\n")
                f.writelines(f"is_a: {go.ids[parent]}\n" for parent in go.parents[term])
                f.write("\n")
        rows, terms = np.nonzero(y_true)
        (tmp / "truth.tsv").write_text("".join(f"P{r}\t{go.ids[t]}\n" for r, t in zip(rows, terms)))
        (tmp / "predictions").mkdir()
        rows, terms = np.nonzero(scores >= THRESHOLDS[0])
        (tmp / "predictions" / "model.tsv").write_text(
            "".join(f"P{r}\t{go.ids[t]}\t{scores[r, t]:.6f}\n" for r, t in zip(rows, terms)))
        ia = None
        if ic is not None:
            ia = tmp / "ia.tsv"
            ia.write_text("".join(f"{term_id}\t{value:.10f}\n" for term_id, value in zip(go.ids, ic)))
        logging.getLogger().setLevel(logging.WARNING)  # the evaluator logs every file at INFO
        with warnings.catch_warnings():  # its pandas calls are deprecated in pandas 3, not wrong
            warnings.simplefilter("ignore")
            table, best = cafa_eval(str(tmp / "go.obo"), str(tmp / "predictions"), str(tmp / "truth.tsv"),
                                    ia=None if ia is None else str(ia), no_orphans=not roots, n_cpu=1)
    result = {"fmax": float(best["f"]["f"].iloc[0]), "fmax_threshold": float(best["f"].index[0][-1])}
    if ic is not None:  # `s_w`: Smin weighted by information content (CAFA's; `s` counts terms)
        by_threshold = table["s_w"].droplevel(["filename", "ns"])
        result |= {"smin": float(by_threshold.min()), "smin_threshold": float(by_threshold.idxmin())}
    return result
