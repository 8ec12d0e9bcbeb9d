"""tale/common.py: the TALE challenge's pipeline — the training pool, naive and BLAST baselines, training and
prediction of the neural models, their evaluation, and GO-term prediction for new sequences.

Data and label space live in `proteins.py`, the networks in `networks.py`, the CAFA metrics in `evaluation.py`.
"""
import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlkit.datasets import DATA_ROOT
from mlkit.experiments import cached_array, run_dir
from mlkit.runtime import seed_everything
from mlkit.train import fit, load_state, predict_logits

from evaluation import (
    bootstrap_difference,
    evaluate,
    fmax_from_counts,
    information_content,
    precision_recall,
    threshold_counts,
)
from networks import TALE, DeepGOCNN, TALELoss
from proteins import ONTOLOGIES, Ontology, Proteins, encode, load_ontology, test_proteins, training_proteins

__all__ = ["ONTOLOGIES", "Ontology", "Proteins", "bootstrap_difference", "evaluate", "load_ontology", "test_proteins",
           "training_proteins"]

MAX_LENGTH = 1000  # TALE's MAXLEN: longer sequences are cut to their first 1,000 residues at test time
PROFILES = {
    # train/val: proteins drawn from Swiss-Prot 2014 (BLAST database and training set alike)
    "full": {"train": 40_000, "val": 500, "test": None, "crop": 256, "batch_size": 32},
    "smoke": {"train": 400, "val": 40, "test": 60, "crop": 64, "batch_size": 16},
}


# ---------------------------------------------------------------- data for one ontology

def load_split(ontology: str, profile: str, seed: int = 0, root=DATA_ROOT) -> dict:
    """{go, train, val, test}: a seeded random pool of Swiss-Prot 2014 proteins split into train/val, and
    TALE's test proteins (all of them in the full profile)."""
    sizes = PROFILES[profile]
    pool = training_proteins(ontology, root)
    order = np.random.default_rng(seed).permutation(len(pool))
    test = test_proteins(ontology, root)
    if sizes["test"]:
        test = test.subset(np.random.default_rng(seed).permutation(len(test))[:sizes["test"]])
    return {"go": load_ontology(ontology, root), "train": pool.subset(np.sort(order[:sizes["train"]])),
            "val": pool.subset(np.sort(order[sizes["train"]:sizes["train"] + sizes["val"]])), "test": test}


class ProteinLoader:
    """Batches (codes [batch, length], targets [batch, terms]) padded to the batch's longest sequence.

    Training (`crop` set): every sequence longer than `crop` is cut to a random window (TALE's `cut`), and
    each epoch draws `per_epoch` proteins from torch's global generator (so a resumed run replays exactly).
    Evaluation: proteins in length order (less padding), cut to their first `max_length` residues.
    """

    def __init__(self, proteins: Proteins, num_terms: int, batch_size: int = 32, crop: int | None = None,
                 per_epoch: int | None = None, max_length: int = MAX_LENGTH):
        self.proteins, self.num_terms, self.batch_size = proteins, num_terms, batch_size
        self.crop, self.max_length = crop, max_length
        self.per_epoch = min(per_epoch or len(proteins), len(proteins))
        self.lengths = np.diff(proteins.residue_offsets)

    def __len__(self) -> int:
        return -(-self.per_epoch // self.batch_size)

    def order(self) -> np.ndarray:
        if self.crop:
            return torch.randperm(len(self.proteins))[:self.per_epoch].numpy()
        return np.argsort(self.lengths, kind="stable")

    def __iter__(self):
        for index in np.array_split(self.order(), len(self)):
            yield self.batch(index)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        windows = [self._window(i) for i in index]
        codes = torch.zeros(len(index), max(map(len, windows)), dtype=torch.long)
        targets = torch.zeros(len(index), self.num_terms)
        for row, (i, window) in enumerate(zip(index, windows)):
            codes[row, :len(window)] = torch.from_numpy(window.astype(np.int64))
            targets[row, self.proteins.terms(i)] = 1
        return codes, targets

    def _window(self, i: int) -> np.ndarray:
        codes = self.proteins.codes(i)
        if self.crop and len(codes) > self.crop:
            start = int(torch.randint(len(codes) - self.crop + 1, ()))
            return codes[start:start + self.crop]
        return codes[:self.max_length]


# ---------------------------------------------------------------- baselines

def naive_scores(train: Proteins, num_terms: int, proteins: int) -> np.ndarray:
    """Every protein gets each term's frequency in the training set (CAFA's naive baseline)."""
    frequency = train.term_frequency(num_terms).astype(np.float32)
    return np.broadcast_to(frequency, (proteins, num_terms)).copy()


def write_fasta(proteins: Proteins, path: Path) -> None:
    with open(path, "w") as f:
        for i in range(len(proteins)):
            f.write(f">{i}\n{proteins.sequence(i)}\n")


def blast_hits(train: Proteins, queries: Proteins, threads: int = 2, evalue: float = 1e-3) -> pd.DataFrame:
    """blastp of every query against the training proteins: (query, subject, bitscore) rows, self-hits
    excluded (E-value <= `evalue`, at most 100 targets per query)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fasta(train, tmp / "train.fa")
        write_fasta(queries, tmp / "query.fa")
        subprocess.run(["makeblastdb", "-in", str(tmp / "train.fa"), "-dbtype", "prot", "-out", str(tmp / "db")],
                       check=True, capture_output=True)
        result = subprocess.run(
            ["blastp", "-query", str(tmp / "query.fa"), "-db", str(tmp / "db"), "-evalue", str(evalue),
             "-max_target_seqs", "100", "-num_threads", str(threads), "-outfmt", "6 qseqid sseqid bitscore"],
            check=True, capture_output=True, text=True)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    hits = pd.DataFrame(rows, columns=["query", "subject", "bitscore"]).astype(
        {"query": int, "subject": int, "bitscore": float})
    # several HSPs of one pair: keep the best
    return hits.groupby(["query", "subject"], as_index=False)["bitscore"].max()


def blast_scores(hits: pd.DataFrame, train: Proteins, num_terms: int, proteins: int,
                 top_hit: bool = False) -> np.ndarray:
    """DiamondScore: a term's score is the bitscore-weighted share of hits annotated with it; `top_hit`:
    the best hit's terms with score 1. Queries without a hit score 0 everywhere."""
    scores = np.zeros((proteins, num_terms), dtype=np.float32)
    for query, group in hits.groupby("query"):
        if top_hit:
            group = group.nlargest(1, "bitscore")
        weights = group["bitscore"].to_numpy() / group["bitscore"].sum()
        for subject, weight in zip(group["subject"], weights):
            scores[query, train.terms(subject)] += weight
    return np.minimum(scores, 1.0)


# ---------------------------------------------------------------- neural models

def build_model(config: dict, go: Ontology) -> torch.nn.Module:
    if config["model"] == "tale":
        return TALE(go.ancestor_matrix(), **config.get("size", {}))
    if config["model"] == "deepgocnn":
        return DeepGOCNN(len(go), **config.get("size", {}))
    raise ValueError(f"unknown model {config['model']!r}")


def train_model(config: dict, run_dir: Path, split: dict) -> tuple[torch.nn.Module, list[dict]]:
    """Train one model of `config` on `split` (resumable, cached in `run_dir`).

    config: model, ontology, epochs, per_epoch (proteins drawn per epoch), crop, batch_size, lr,
    schedule ("constant" as TALE, or "cosine": linear warm-up over the first 5% of steps, then cosine decay),
    regulariser (hierarchy weight, TALE loss), seed, size (network keyword arguments).
    """
    seed_everything(config["seed"])
    go = split["go"]
    model = build_model(config, go)
    if config.get("prior_bias"):  # start from the training frequencies (the naive baseline), not from 0.5
        frequency = split["train"].term_frequency(len(go)).clip(1e-6, 1 - 1e-6)
        with torch.no_grad():
            model.head.bias.copy_(torch.as_tensor(np.log(frequency / (1 - frequency))))
    train = ProteinLoader(split["train"], len(go), config["batch_size"], crop=config["crop"],
                          per_epoch=config["per_epoch"])
    val = ProteinLoader(split["val"], len(go), config["batch_size"], max_length=2 * config["crop"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    steps = config["epochs"] * len(train)
    scheduler = None
    if config["schedule"] == "cosine":
        warmup = max(1, steps // 20)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(  # a float: checkpoints hold it
            (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))))
    loss = TALELoss(go.edges, config.get("regulariser", 0.0))
    history = fit(model, optimizer, loss, train, val, config["epochs"], run_dir=run_dir, scheduler=scheduler,
                  scheduler_per_batch=scheduler is not None, progress=False)
    model.load_state_dict(load_state(run_dir / "best.pt"))  # the epoch with the lowest validation loss
    return model, history


def predict(model: torch.nn.Module, proteins: Proteins, num_terms: int, batch_size: int = 16) -> np.ndarray:
    """Sigmoid scores [proteins, terms] in the proteins' order."""
    loader = ProteinLoader(proteins, num_terms, batch_size)  # yields the proteins in `loader.order()`
    logits, _ = predict_logits(model, loader)
    scores = np.empty((len(proteins), num_terms), dtype=np.float32)
    scores[loader.order()] = torch.sigmoid(logits).numpy()
    return scores


def consistent(scores: np.ndarray, go: Ontology) -> np.ndarray:
    """Hierarchy-consistent scores: a term scores at least as high as each of its descendants
    (its children's scores propagated upwards, deepest terms first)."""
    scores = scores.copy()
    depth = np.array([len(a) for a in go.ancestors])  # a child has more ancestors than each of its parents
    for child in np.argsort(-depth, kind="stable"):
        for parent in go.parents[child]:
            np.maximum(scores[:, parent], scores[:, child], out=scores[:, parent])
    return scores


def ensemble(network: np.ndarray, blast: np.ndarray, weight: float) -> np.ndarray:
    """DeepGOPlus combination: weight * network + (1 - weight) * BLAST where BLAST found a hit, the
    network alone elsewhere."""
    has_hit = blast.any(1, keepdims=True)
    return np.where(has_hit, weight * network + (1 - weight) * blast, network)


def fmax(y_true: np.ndarray, scores: np.ndarray) -> float:
    return fmax_from_counts(threshold_counts(y_true, scores))[0]


def term_information(split: dict) -> np.ndarray:
    """Information content of every term from the training proteins' annotations (for Smin)."""
    return information_content(split["train"].label_matrix(len(split["go"])), split["go"].parents)


# ---------------------------------------------------------------- new sequences

def read_sequences(text_or_path) -> list[tuple[str, str]]:
    """(name, sequence) pairs from pasted text or a FASTA file: FASTA records, or one bare sequence."""
    path = Path(text_or_path) if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str) and "\n" not in text_or_path and len(text_or_path) < 4096
        and Path(text_or_path).is_file()) else None
    text = path.read_text() if path else str(text_or_path)
    if not text.strip():
        raise ValueError("no sequence given: paste a protein sequence or pass a FASTA file")
    if not text.lstrip().startswith(">"):
        return [("query", text)]
    records = []
    for block in text.split(">")[1:]:
        header, _, body = block.partition("\n")
        records.append((header.strip() or f"sequence {len(records) + 1}", body))
    return records


def predict_go_terms(model: torch.nn.Module, go: Ontology, text_or_path, top: int = 10,
                     reference: Proteins | None = None, weight: float = 1.0) -> pd.DataFrame:
    """The `top` GO terms (with names and scores) of each sequence in `text_or_path`. With `reference` (annotated
    proteins), the network's scores are combined with BLAST against them (`ensemble`, network `weight`).
    A sequence that cannot be read gets a row with its error; the others are still predicted."""
    records = read_sequences(text_or_path)
    readable, codes, rows = [], [], []
    for position, (name, sequence) in enumerate(records):
        try:
            codes.append(encode(sequence))
            readable.append(position)
        except ValueError as e:
            rows.append({"record": position, "sequence": name, "error": str(e)})
    if codes:
        queries = Proteins.from_lists([records[p][0] for p in readable], codes, [[] for _ in codes])
        scores = predict(model, queries, len(go))
        if reference is not None:
            hits = blast_hits(reference, queries)
            scores = ensemble(scores, blast_scores(hits, reference, len(go), len(queries)), weight)
        for position, row in zip(readable, consistent(scores, go)):
            for rank, term in enumerate(np.argsort(-row)[:top], 1):
                rows.append({"record": position, "sequence": records[position][0], "rank": rank,
                             "go_id": go.ids[term], "name": go.names[term], "score": round(float(row[term]), 3),
                             "error": ""})
    columns = ["sequence", "rank", "go_id", "name", "score", "error"]
    return pd.DataFrame(rows).sort_values(["record", "rank"], kind="stable", na_position="first")[columns]


# ---------------------------------------------------------------- the experiments of the notebooks

MODELS = {
    # TALE as published: constant Adam learning rate, BCE + hierarchy regulariser (lambda 1, one of the
    # values of the released models)
    "tale_port": {"model": "tale", "schedule": "constant", "lr": 1e-3, "regulariser": 1.0},
    # same network, parameters, data and steps: warm-up + cosine learning-rate schedule ...
    "tale_cosine": {"model": "tale", "schedule": "cosine", "lr": 2e-3, "regulariser": 1.0},
    # ... and the output biases initialised to the training frequencies' log-odds
    "tale_minor": {"model": "tale", "schedule": "cosine", "lr": 2e-3, "regulariser": 1.0, "prior_bias": True},
    "new_arch": {"model": "deepgocnn", "schedule": "cosine", "lr": 1e-3, "regulariser": 0.0},
}
BUDGETS = {  # proteins seen in training = epochs x per_epoch
    "full": {"tale": {"epochs": 8, "per_epoch": 1_500}, "deepgocnn": {"epochs": 20, "per_epoch": 4_000}},
    "smoke": {"tale": {"epochs": 1, "per_epoch": 32}, "deepgocnn": {"epochs": 1, "per_epoch": 32}},
}


def model_config(name: str, ontology: str, profile: str, seed: int = 0) -> dict:
    config = {"name": f"{name}-{ontology}", **MODELS[name], "ontology": ontology, "seed": seed}
    sizes = PROFILES[profile]
    config |= {"crop": sizes["crop"], "batch_size": sizes["batch_size"], **BUDGETS[profile][config["model"]]}
    if profile == "smoke":
        config["size"] = {"layers": 1} if config["model"] == "tale" else {"filters": 8, "kernels": (8, 16)}
    return config


def trained_model(name: str, ontology: str, profile: str, split: dict, runs: Path) -> tuple[torch.nn.Module, dict]:
    """(model, {config, history, train_seconds}) of a cached, resumable run."""
    config = model_config(name, ontology, profile)
    folder = run_dir(runs, config)
    model, history = train_model(config, folder, split)
    return model, {"config": config, "history": history, "run_dir": folder,
                   "train_seconds": sum(row["seconds"] for row in history)}


def model_scores(name: str, ontology: str, profile: str, split: dict, runs: Path, part: str = "test") -> np.ndarray:
    """Sigmoid scores of a trained model on `split[part]`, cached beside its run (trained if needed)."""
    folder = run_dir(runs, model_config(name, ontology, profile))
    return cached_array(folder / f"scores_{part}.npy", lambda: predict(
        trained_model(name, ontology, profile, split, runs)[0], split[part], len(split["go"])))


def baseline_scores(name: str, ontology: str, split: dict, runs: Path, part: str = "test") -> np.ndarray:
    """naive, blast (bitscore-weighted) or blast_top_hit scores on `split[part]`; BLAST hits are cached."""
    go, train, queries = split["go"], split["train"], split[part]
    if name == "naive":
        return naive_scores(train, len(go), len(queries))
    path = Path(runs) / f"blast-{ontology}-{len(train)}-{part}.csv"
    if path.exists():
        hits = pd.read_csv(path)
    else:
        hits = blast_hits(train, queries)
        path.parent.mkdir(parents=True, exist_ok=True)
        hits.to_csv(path, index=False)
    return blast_scores(hits, train, len(go), len(queries), top_hit=name == "blast_top_hit")


# ---------------------------------------------------------------- tables and plots

def results_table(evaluations: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """{ontology: {model: evaluate(...)}} -> one row per model, Fmax / AUPR / Smin with 95% intervals per ontology."""
    rows = {}
    for ontology, by_model in evaluations.items():
        for model, result in by_model.items():
            row = rows.setdefault(model, {})
            for metric in ("fmax", "aupr", "smin"):
                low, high = result[f"{metric}_ci"]
                row[(ontology, metric)] = f"{result[metric]:.3f} [{low:.3f}, {high:.3f}]"
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def plot_precision_recall(ax, y_true: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Protein-centric precision-recall curves over the thresholds 0.01..1, Fmax marked on each."""
    for name, model_scores in scores.items():
        counts = threshold_counts(y_true, model_scores)
        precision, recall = precision_recall(counts)
        covered = counts["predicted"].sum(1) > 0
        line, = ax.plot(recall[covered], precision[covered], label=name)
        fmax, threshold = fmax_from_counts(counts)
        best = np.searchsorted(counts["thresholds"], threshold)
        ax.plot(recall[best], precision[best], "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
