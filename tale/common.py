"""tale/common.py: the TALE challenge's pipeline — the training pool, naive and BLAST baselines, training and
prediction of the neural models, their evaluation, and GO-term prediction for new sequences.

Data and label space live in `proteins.py`, the networks in `networks.py`, the CAFA metrics in `evaluation.py`.
"""
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlkit.datasets import DATA_ROOT, MARKER, DataError
from mlkit.experiments import cached_array, read_record, run_dir, trained_on, write_record
from mlkit.predictors import load_arrays, named_files, read_manifest, save_arrays, write_manifest
from mlkit.results import load_results
from mlkit.runtime import device_name, seed_everything
from mlkit.train import fit, load_half, load_state, parameter_count, predict_logits, save_half, warmup_cosine

from .evaluation import (
    bootstrap_difference,
    cafa_evaluator,
    evaluate,
    fmax_from_counts,
    information_content,
    precision_recall,
    threshold_counts,
)
from .networks import TALE, DeepGOCNN, TALELoss
from .proteins import (
    ONTOLOGIES,
    RESIDUES,
    SWISSPROT_PACKAGE,
    Ontology,
    Proteins,
    cafa3_proteins,
    encode,
    load_ontology,
    test_proteins,
    training_proteins,
)

__all__ = ["ONTOLOGIES", "Ontology", "Proteins", "bootstrap_difference", "cafa_evaluator", "evaluate", "load_ontology",
           "test_proteins", "training_proteins"]

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
REFERENCE_FOLDER = HERE / "runs" / "blast_reference"  # BLAST databases of the predictor, built on first use
MAX_LENGTH = 1000  # TALE's MAXLEN: longer sequences are cut to their first 1,000 residues at test time
RECIPE = {  # the deployed network (NETWORK, one per ontology): TALE ported, with three changes that cost nothing
    "model": "tale",  # TALE's transformer over residues with label embeddings, its published size
    "regulariser": 1.0,  # BCE + TALE's hierarchy regulariser, lambda 1 (one of the released models' values)
    "schedule": "cosine", "lr": 2e-3,  # Adam: 5% linear warm-up to 2e-3, then cosine decay (TALE: constant 1e-3)
    "prior_bias": True,  # output biases start at the log-odds of each term's training frequency (the naive model)
    "crop": 256, "batch_size": 32,  # random 256-residue crops, as TALE's port (tale_port)
    "epochs": 8, "per_epoch": 1_500,  # 12,000 proteins drawn from the 40,000: the port's budget, on a 2-core CPU
}  # the third change, hierarchy-consistent scores (`consistent`), is applied at prediction time
PROFILES = {
    # train/val: proteins drawn from Swiss-Prot 2014 (BLAST database and training set alike)
    # pool: the proteins alignment searches (None: all of the pool, about 458,000 MF and 391,000 CC proteins)
    "full": {"train": 40_000, "val": 500, "test": None, "pool": None, "crop": RECIPE["crop"],
             "batch_size": RECIPE["batch_size"]},
    "smoke": {"train": 400, "val": 40, "test": 60, "pool": 5_000, "crop": 64, "batch_size": 16},
}
NETWORK = "tale_minor"  # RECIPE's name in MODELS (see the Challenge notebook's conclusions for why this one)


# ---------------------------------------------------------------- data for one ontology

def load_split(ontology: str, profile: str, seed: int = 0, root=DATA_ROOT) -> dict:
    """{go, pool, train, val, test, cafa3}: the Swiss-Prot 2014 pool (alignment searches all of it in full), a
    seeded random sample of it split into train/val (the networks learn from these), TALE's `ours` test proteins and its
    CAFA3 test proteins (a second, older time split) without those the networks train on (all of both in full)."""
    sizes = PROFILES[profile]
    pool = training_proteins(ontology, root)
    train, val = pool_selection(len(pool), sizes["train"], sizes["val"], seed)
    seen = {pool.sequence(i) for i in np.concatenate([train, val])}
    searched = pool.subset(pool_selection(len(pool), sizes["pool"], seed=seed)[0]) if sizes["pool"] else pool
    cafa3 = cafa3_proteins(ontology, root)
    cafa3 = cafa3.subset([i for i in range(len(cafa3)) if cafa3.sequence(i) not in seen])
    test = test_proteins(ontology, root)
    if sizes["test"]:
        pick = lambda proteins: proteins.subset(np.random.default_rng(seed).permutation(len(proteins))[:sizes["test"]])
        test, cafa3 = pick(test), pick(cafa3)
    return {"go": load_ontology(ontology, root), "pool": searched, "train": pool.subset(train), "val": pool.subset(val),
            "test": test, "cafa3": cafa3}


def pool_selection(pool_size: int, train: int, val: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted pool indices of the `train` and `val` proteins: the first ones of a seeded permutation of the pool."""
    order = np.random.default_rng(seed).permutation(pool_size)
    return np.sort(order[:train]), np.sort(order[train:train + val])


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


def build_database(proteins: Proteins, prefix: Path, command: list[str]) -> None:
    """Run a database builder `command` (its "{fasta}" argument: `proteins` written to `prefix`.fa) in `prefix`'s
    folder; the FASTA file is removed afterwards."""
    prefix = Path(prefix)
    fasta = prefix.with_name(prefix.name + ".fa")
    write_fasta(proteins, fasta)
    try:
        subprocess.run([part.format(fasta=fasta.name) for part in command], cwd=prefix.parent, check=True,
                       capture_output=True)
    finally:
        fasta.unlink()


def make_blast_database(proteins: Proteins, prefix: Path) -> Path:
    """A BLAST protein database of `proteins` at `prefix` (sequence ids: their indices)."""
    build_database(proteins, prefix, ["makeblastdb", "-in", "{fasta}", "-dbtype", "prot", "-out", Path(prefix).name])
    return Path(prefix)


def blast_hits(train: Proteins, queries: Proteins, threads: int = 2, evalue: float = 1e-3,
               database: Path | None = None) -> pd.DataFrame:
    """blastp of every query against the training proteins (or their ready-made `database`): (query, subject,
    bitscore) rows (E-value <= `evalue`, at most 100 targets per query)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        database = database or make_blast_database(train, tmp / "db")
        write_fasta(queries, tmp / "query.fa")
        result = subprocess.run(
            ["blastp", "-query", str(tmp / "query.fa"), "-db", str(database), "-evalue", str(evalue),
             "-max_target_seqs", "100", "-num_threads", str(threads), "-outfmt", "6 qseqid sseqid bitscore"],
            check=True, capture_output=True, text=True)
    return hit_table(result.stdout)


def hit_table(tabular: str) -> pd.DataFrame:
    """(query, subject, bitscore) rows of BLAST-style tabular output, the best HSP of each pair."""
    rows = [line.split("\t")[:3] for line in tabular.splitlines()]
    hits = pd.DataFrame(rows, columns=["query", "subject", "bitscore"]).astype(
        {"query": int, "subject": int, "bitscore": float})
    return hits.groupby(["query", "subject"], as_index=False)["bitscore"].max()


def make_diamond_database(proteins: Proteins, prefix: Path, threads: int = 2) -> Path:
    """A DIAMOND database `prefix`.dmnd of `proteins` (sequence ids: their indices)."""
    prefix = Path(prefix)
    build_database(proteins, prefix, ["diamond", "makedb", "--in", "{fasta}", "--db", prefix.name, "--threads",
                                      str(threads), "--quiet"])
    return prefix.with_name(prefix.name + ".dmnd")


def diamond_hits(reference: Proteins, queries: Proteins, threads: int = 2, evalue: float = 1e-3,
                 database: Path | None = None) -> pd.DataFrame:
    """DIAMOND blastp (default sensitivity) of every query against `reference` (or its ready-made `database`),
    as `blast_hits`; far faster than blastp, so it searches the whole 2014 pool."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        database = database or make_diamond_database(reference, tmp / "db", threads)
        write_fasta(queries, tmp / "query.fa")
        result = subprocess.run(
            ["diamond", "blastp", "--db", str(database), "--query", str(tmp / "query.fa"), "--evalue", str(evalue),
             "--max-target-seqs", "100", "--threads", str(threads), "--outfmt", "6", "qseqid", "sseqid", "bitscore",
             "--quiet"], check=True, capture_output=True, text=True)
    return hit_table(result.stdout)


def without_identical(hits: pd.DataFrame, reference: Proteins, queries: Proteins) -> pd.DataFrame:
    """`hits` without those whose subject has the query's exact sequence: evaluated proteins never read their own
    annotations (the pool holds most CAFA3 proteins, with 2014 electronic annotations, and duplicates of the
    validation proteins)."""
    same = [np.array_equal(queries.codes(q), reference.codes(s)) for q, s in zip(hits["query"], hits["subject"])]
    return hits[~np.asarray(same, dtype=bool)].reset_index(drop=True)


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
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(max(1, steps // 20), steps))
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


BLEND_WEIGHTS = np.round(np.linspace(0, 1, 11), 1)  # the network weights `blend_weight` chooses from


def blend_weight(y_true: np.ndarray, network: np.ndarray, blast: np.ndarray,
                 weights=BLEND_WEIGHTS) -> tuple[float, list[float]]:
    """The network weight of `ensemble` with the highest Fmax on (validation) proteins, and every weight's Fmax."""
    fmaxes = [fmax(y_true, ensemble(network, blast, w)) for w in weights]
    return float(weights[int(np.argmax(fmaxes))]), fmaxes


def term_information(split: dict) -> np.ndarray:
    """Information content of every term from the training proteins' annotations (for Smin)."""
    return information_content(split["train"].label_matrix(len(split["go"])), split["go"].parents)


# ---------------------------------------------------------------- new sequences

MIN_LENGTH = 10  # fewer residues than this: refused (no GO term can be read from a peptide that short)
NUCLEOTIDES = "ACGTUN"
NUCLEOTIDE_SHARE = 0.9  # a record whose letters are more than 90% A/C/G/T/U/N is taken for DNA/RNA


def read_sequences(text_or_path) -> list[tuple[str, str]]:
    """(name, sequence text) pairs of pasted text or a FASTA file: FASTA records (lines before the first header
    form one record named "query"), or one bare sequence ("query"). Nothing is checked here (`clean_sequence`
    does it): an empty text is one empty record, a header alone a record with an empty sequence."""
    path = fasta_file(text_or_path)
    if path is None and not isinstance(text_or_path, str):
        raise TypeError(f"expected FASTA text, a sequence or a FASTA file, not {type(text_or_path).__name__}")
    text = path.read_text() if path else text_or_path
    records, name, lines = [], None, []
    for line in text.splitlines():
        if line.lstrip().startswith(">"):
            if name is not None or "".join(lines).strip():
                records.append((name or "query", "\n".join(lines)))
            name, lines = line.lstrip()[1:].strip() or f"sequence {len(records) + 1}", []
        elif not line.startswith(";"):  # FASTA comment lines
            lines.append(line)
    if name is not None or "".join(lines).strip() or not records:
        records.append((name or "query", "\n".join(lines)))
    return records


def fasta_file(text_or_path) -> Path | None:
    """`text_or_path` as a file to read: a Path, or a one-line string naming an existing file (never pasted
    sequence text, however long)."""
    if isinstance(text_or_path, Path):
        return text_or_path
    if not isinstance(text_or_path, str) or "\n" in text_or_path.strip() or text_or_path.lstrip().startswith(">"):
        return None
    try:
        path = Path(text_or_path.strip())
        return path if path.is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return None


def clean_sequence(text) -> str:
    """The residues of one record: whitespace removed, upper case, a final stop `*` dropped; a ValueError saying
    why it is not a protein sequence (empty, letters outside the amino-acid alphabet, too short, DNA/RNA)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a protein sequence as text, not {type(text).__name__}")
    sequence = "".join(text.split()).upper()
    sequence = sequence[:-1] if sequence.endswith("*") else sequence  # the stop codon of a translated gene
    if not sequence:
        raise ValueError("empty sequence: the record has no residues")
    invalid = "".join(sorted(set(sequence) - set(RESIDUES)))
    if invalid:
        raise ValueError(f"invalid residue letter(s) {invalid!r}: expected the amino-acid alphabet {RESIDUES} "
                         "(and at most a final '*')")
    if len(sequence) < MIN_LENGTH:
        raise ValueError(f"too short for a protein: {len(sequence)} residues (at least {MIN_LENGTH})")
    share = sum(sequence.count(letter) for letter in NUCLEOTIDES) / len(sequence)
    if share > NUCLEOTIDE_SHARE:
        raise ValueError(f"looks like DNA/RNA, not a protein: {share:.0%} of its letters are "
                         f"{'/'.join(NUCLEOTIDES)} (translate it first)")
    return sequence


def read_records(inputs) -> list[dict]:
    """{name, sequence, error} of every record of `inputs` (pasted text, a FASTA file, or a list of them), in
    order: the cleaned sequence (`clean_sequence`), or "" and why it cannot be predicted."""
    records = []
    for item in inputs if isinstance(inputs, list | tuple) else [inputs]:
        try:
            found = read_sequences(item)
        except (OSError, UnicodeDecodeError, TypeError) as e:
            name = item.name if isinstance(item, Path) else str(item)[:60]
            records.append({"name": name, "sequence": "", "error": f"cannot read the input: {e}"})
            continue
        for name, text in found:
            try:
                records.append({"name": name, "sequence": clean_sequence(text), "error": ""})
            except ValueError as e:
                records.append({"name": name, "sequence": "", "error": str(e)})
    return records


def go_term_scores(model: torch.nn.Module, go: Ontology, sequences: list[str], reference: Proteins | None = None,
                   weight: float = 1.0, database: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [sequences, terms], has_hit [sequences]): the network's hierarchy-consistent scores (its first
    `MAX_LENGTH` residues), combined with BLAST of the whole sequences against `reference` (annotated proteins,
    or their ready-made `database`) by `ensemble` with network `weight` where BLAST finds a hit, as validated."""
    queries = Proteins.from_lists([str(i) for i in range(len(sequences))], [encode(s) for s in sequences],
                                  [[] for _ in sequences])
    scores = consistent(predict(model, queries, len(go)), go)
    if reference is None:
        return scores, np.zeros(len(sequences), dtype=bool)
    blast = blast_scores(blast_hits(reference, queries, database=database), reference, len(go), len(queries))
    return ensemble(scores, blast, weight), blast.any(1)


def top_terms(scores: np.ndarray, go: Ontology, top: int) -> list[tuple[int, float]]:
    """The `top` best-scoring terms of one protein below the root (which every protein has), best first."""
    roots = set(go.roots)
    order = [t for t in np.argsort(-scores, kind="stable")[:top + len(roots)] if t not in roots]
    return [(int(t), float(scores[t])) for t in order[:top]]


GO_TERM_COLUMNS = ["record", "sequence", "length", "ontology", "top term", "score", "top terms", "scored by", "error"]


def go_term_rows(records: list[dict], model: torch.nn.Module, go: Ontology, top: int = 5, network: str = "network",
                 reference: Proteins | None = None, weight: float = 1.0, database: Path | None = None,
                 without_blast: str = "") -> list[dict]:
    """One row per record (`read_records`) for ontology `go`: its `top` terms with their scores, what scored them
    (`without_blast`: why BLAST was not used), or the record's error."""
    readable = [i for i, r in enumerate(records) if not r["error"]]
    scores, has_hit = go_term_scores(model, go, [records[i]["sequence"] for i in readable], reference, weight,
                                     database) if readable else ([], [])
    found = dict(zip(readable, zip(scores, has_hit)))
    rows = []
    for i, record in enumerate(records):
        row = {"record": i, "sequence": record["name"], "length": len(record["sequence"]) or None,
               "ontology": go.name, "top term": "", "top terms": "", "scored by": "", "error": record["error"]}
        if i in found:
            terms = top_terms(found[i][0], go, top)
            if reference is None:
                scored_by = f"{network} alone" + (f": {without_blast}" if without_blast else "")
            else:
                scored_by = f"{network} + BLAST (network weight {weight:g})" if found[i][1] else \
                    f"{network} (no BLAST hit)"
            row |= {"top term": f"{go.ids[terms[0][0]]} {go.names[terms[0][0]]}", "score": round(terms[0][1], 3),
                    "top terms": "; ".join(f"{go.ids[t]} {go.names[t]} {p:.2f}" for t, p in terms),
                    "scored by": scored_by}
        rows.append(row)
    return rows


def go_term_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=GO_TERM_COLUMNS).astype({"length": "Int64", "score": float})


def predict_go_terms(model: torch.nn.Module, go: Ontology, inputs, top: int = 5, reference: Proteins | None = None,
                     weight: float = 1.0) -> pd.DataFrame:
    """The `top` GO terms of `go` (with names and scores) of each record of `inputs` (`read_records`), one row per
    record. With `reference` (annotated proteins), BLAST against them is combined with the network (`ensemble`,
    network `weight`). A record that cannot be read gets a row with its error; the others are still predicted."""
    return go_term_table(go_term_rows(read_records(inputs), model, go, top, reference=reference, weight=weight))


# ---------------------------------------------------------------- the experiments of the notebooks

MODELS = {
    # TALE as published: constant Adam learning rate, BCE + hierarchy regulariser (lambda 1, one of the
    # values of the released models)
    "tale_port": {"model": "tale", "schedule": "constant", "lr": 1e-3, "regulariser": 1.0},
    # same network, parameters, data and steps: warm-up + cosine learning-rate schedule ...
    "tale_cosine": {"model": "tale", "schedule": "cosine", "lr": 2e-3, "regulariser": 1.0},
    # ... and the output biases initialised to the training frequencies' log-odds
    "tale_minor": {key: RECIPE[key] for key in ("model", "schedule", "lr", "regulariser", "prior_bias")},
    "new_arch": {"model": "deepgocnn", "schedule": "cosine", "lr": 1e-3, "regulariser": 0.0},
}
BUDGETS = {  # proteins seen in training = epochs x per_epoch
    "full": {"tale": {key: RECIPE[key] for key in ("epochs", "per_epoch")},
             "deepgocnn": {"epochs": 20, "per_epoch": 4_000}},
    "smoke": {"tale": {"epochs": 1, "per_epoch": 32}, "deepgocnn": {"epochs": 1, "per_epoch": 32}},
}


def make_config(name: str = NETWORK, ontology: str = "mf", profile: str = "full", seed: int = 0) -> dict:
    """The run of model `name` (MODELS; by default the deployed one, RECIPE) for `ontology` in `profile`."""
    config = {"name": f"{name}-{ontology}", **MODELS[name], "ontology": ontology, "profile": profile, "seed": seed}
    sizes = PROFILES[profile]
    config |= {"crop": sizes["crop"], "batch_size": sizes["batch_size"], **BUDGETS[profile][config["model"]]}
    if profile == "smoke":
        config["size"] = {"layers": 1} if config["model"] == "tale" else {"filters": 8, "kernels": (8, 16)}
    return config


def run(config: dict, run_dir: Path, split: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """(model, {config, history, run_dir, train_seconds}) of a cached, resumable run, trained on `split` (by
    default `load_split` of the config's ontology and profile)."""
    split = split or load_split(config["ontology"], config["profile"])
    model, history = train_model(config, run_dir, split)
    return model, {"config": config, "history": history, "run_dir": run_dir,
                   "train_seconds": sum(row["seconds"] for row in history)}


def trained_model(name: str, ontology: str, profile: str, split: dict, runs: Path) -> tuple[torch.nn.Module, dict]:
    """`run` of model `name`'s configuration in its folder under `runs`."""
    config = make_config(name, ontology, profile)
    return run(config, run_dir(runs, config), split)


# ---------------------------------------------------------------- committed records of runs and searches
# `runs/` (weights, dense scores, search databases) is not committed; `records/` beside it is: what the notebooks
# show of each trained network and each search, so that a fresh clone re-executes them without training or
# searching. A record is reused only for the same configuration (its name holds the configuration's hash);
# `retrain=True` or deleting it trains (or searches) again.

SCORE_FLOOR = 0.01  # scores below the lowest CAFA threshold are recorded as 0: no Fmax or Smin threshold sees them


def records_folder(runs: Path) -> Path:
    return Path(runs).parent / "records"


def compact_scores(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Scores [proteins, terms] as sparse rows (CSR) of the scores >= SCORE_FLOOR, float32 values kept exactly."""
    rows, terms = np.nonzero(scores >= SCORE_FLOOR)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(scores)))])
    return {"shape": np.asarray(scores.shape, np.int64), "indptr": indptr.astype(np.int64),
            "terms": terms.astype(np.uint16), "values": scores[rows, terms].astype(np.float32)}


def dense_scores(compact: dict[str, np.ndarray]) -> np.ndarray:
    scores = np.zeros(tuple(compact["shape"]), dtype=np.float32)
    rows = np.repeat(np.arange(len(scores)), np.diff(compact["indptr"]))
    scores[rows, compact["terms"]] = compact["values"]
    return scores


def network_run(name: str, ontology: str, profile: str, split: dict, runs: Path, retrain: bool = False) -> dict:
    """{config, history, train_seconds, parameters, provenance} of model `name`'s run: from its record, or trained
    now (`trained_model`) and recorded."""
    config = make_config(name, ontology, profile)
    folder = run_dir(runs, config)
    record = records_folder(runs) / f"{folder.name}.json"
    if record.exists() and not retrain:
        return read_record(record)
    model, info = trained_model(name, ontology, profile, split, runs)
    result = {"config": config, "history": info["history"], "train_seconds": info["train_seconds"],
              "parameters": parameter_count(model)}
    write_record(record, config, result, trained_on(folder))
    return result | {"provenance": "trained now"}


def save_network(name: str, ontology: str, profile: str, runs: Path, folder: Path) -> Path | None:
    """Model `name`'s best weights (fp16) as `folder`/`weights_file(ontology)`; None when its run folder holds no
    weights here (a notebook re-executed from records keeps the committed checkpoint)."""
    config = make_config(name, ontology, profile)
    best = run_dir(runs, config) / "best.pt"
    if not best.exists():
        return None
    model = build_model(config, load_ontology(ontology))
    model.load_state_dict(load_state(best))
    return save_half(model, Path(folder) / weights_file(ontology))


def model_scores(name: str, ontology: str, profile: str, split: dict, runs: Path, part: str = "test",
                 retrain: bool = False) -> np.ndarray:
    """Sigmoid scores of a trained model on `split[part]` (`compact_scores` precision), from its record, else
    predicted now (trained if needed) and recorded."""
    folder = run_dir(runs, make_config(name, ontology, profile))
    record = records_folder(runs) / f"{folder.name}-{part}.npz"
    if not record.exists() or retrain:
        scores = cached_array(folder / f"scores_{part}.npy", lambda: predict(
            trained_model(name, ontology, profile, split, runs)[0], split[part], len(split["go"])))
        save_arrays(record, **compact_scores(scores))
    return dense_scores(load_arrays(record))


BASELINES = {  # name: (search, the split's part it searches, naive scores where the search finds no hit)
    "blast_top_hit": ("blast", "train", False), "blast": ("blast", "train", False),
    "alignment": ("diamond", "pool", False), "alignment_naive": ("diamond", "pool", True),
}


def baseline_scores(name: str, ontology: str, split: dict, runs: Path, part: str = "test") -> np.ndarray:
    """Scores on `split[part]` of `naive` or of a label transfer in BASELINES: blastp against the networks' training
    proteins, or DIAMOND against the whole pool (`alignment`); bitscore-weighted (`blast_top_hit`: the best hit's
    terms). Hits of a query with its own exact sequence are dropped (`without_identical`); hits are cached."""
    go, queries = split["go"], split[part]
    naive = naive_scores(split["train"], len(go), len(queries))
    if name == "naive":
        return naive
    search, reference, fallback = BASELINES[name]
    reference = split[reference]
    hits = without_identical(search_hits(search, ontology, reference, queries, runs, part)[0], reference, queries)
    scores = blast_scores(hits, reference, len(go), len(queries), top_hit=name == "blast_top_hit")
    return np.where(scores.any(1, keepdims=True), scores, naive) if fallback else scores


def search_hits(search: str, ontology: str, reference: Proteins, queries: Proteins, runs: Path,
                part: str) -> tuple[pd.DataFrame, dict]:
    """(hits, {seconds, queries, database_seconds, hardware, date}) of `search` ("blast" or "diamond") of `queries`
    against `reference`: from its record (`records_folder`), else searched now and recorded. DIAMOND's database is
    built once into `runs` (`database_seconds`: its build time, None when it was already there); blastp builds its
    40,000-protein database inside each search."""
    stem = records_folder(runs) / f"{search}-{ontology}-{len(reference)}-{part}"
    hits_file, timing = stem.with_suffix(".csv.gz"), stem.with_suffix(".json")
    if not timing.exists():
        database, database_seconds = Path(runs) / f"diamond-{ontology}-{len(reference)}.dmnd", None
        if search == "diamond" and not database.exists():
            database.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            make_diamond_database(reference, database.with_suffix(""))
            database_seconds = time.perf_counter() - started
        started = time.perf_counter()
        hits = blast_hits(reference, queries) if search == "blast" else diamond_hits(reference, queries,
                                                                                      database=database)
        search_seconds = time.perf_counter() - started
        hits_file.parent.mkdir(parents=True, exist_ok=True)
        hits.to_csv(hits_file, index=False)
        timing.write_text(json.dumps({"seconds": search_seconds, "queries": len(queries), "threads": 2,
                                      "database_seconds": database_seconds, "date": time.strftime("%Y-%m-%d"),
                                      "hardware": device_name(torch.device("cpu"))}) + "\n")
    return pd.read_csv(hits_file), json.loads(timing.read_text())


SUMMARIZED = ("naive", "blast", "alignment", "alignment_naive", "tale_port", "tale_minor", "combination")
HEADLINE = ("combination", "alignment_naive", "tale_minor", "naive")


def summarize(*, profile: str, evaluations: dict[str, dict[str, dict[str, dict]]], alpha: dict, infos: dict) -> dict:
    """results.json from the Challenge notebook's `evaluations` ({part: {ontology: {model: evaluate(...)}}} of the
    `ours` test and CAFA3 proteins), the combination weights chosen on CAFA3 ({(network, ontology): alpha}) and
    the trained runs' infos (`run`)."""
    smoke = " [smoke subset]" if profile == "smoke" else ""
    test, cafa3 = evaluations["test"], evaluations["cafa3"]
    by_model = lambda by_ontology, metric: {m: {o: by_ontology[o][m][metric] for o in ONTOLOGIES} for m in SUMMARIZED}
    return {
        "dataset": "TALE 'ours' test sets (2020 time split: MF 1,916, CC 2,084 proteins); training: 40,000 random "
                   "Swiss-Prot 2014 proteins per ontology (metastudent-data, electronic annotations included), "
                   "test accessions and sequences removed; alignment searches all of the 2014 pool" + smoke,
        "data": "TALE's 2020 time-split test proteins (MF 1,916, CC 2,084); networks trained on 40,000 Swiss-Prot "
                "2014 proteins per ontology (electronic annotations included), alignment against all of them"
                + smoke,
        "profile": profile,
        **{metric: by_model(test, metric) for metric in ("fmax", "aupr", "smin", "fmax_no_root", "fmax_ci")},
        "cafa3_fmax": by_model(cafa3, "fmax"),
        "cafa3_proteins": {o: cafa3[o]["naive"]["proteins"] for o in ONTOLOGIES},
        "alpha": {o: alpha["tale_minor", o] for o in ONTOLOGIES},
        "selected_on": "CAFA3 test proteins (2016-17 annotations, a time split before `ours`)",
        "train_minutes": {f"{name}_{o}": info["train_seconds"] / 60 for (name, o), info in infos.items()},
        "published_tale": "not reproduced here: the paper's result tables were not available offline",
        "headline": {f"Fmax {o} ({' / '.join(HEADLINE)})": " / ".join(f"{test[o][m]['fmax']:.3f}" for m in HEADLINE)
                     for o in ONTOLOGIES},
    }


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


def fmax_table(evaluations: dict[str, dict[str, dict[str, dict]]], benchmarks: dict[str, str]) -> pd.DataFrame:
    """{part: {ontology: {model: evaluate(..., roots=...)}}} -> one row per model: Fmax with the root term (TALE's
    convention) and without it (the CAFA evaluator's), per ontology and benchmark (`benchmarks`: part -> name)."""
    columns = {}
    for ontology in ONTOLOGIES:
        for part, name in benchmarks.items():
            for key, label in (("fmax", "Fmax"), ("fmax_no_root", "Fmax, no root")):
                columns[(ontology, name, label)] = {m: round(r[key], 3) for m, r in evaluations[part][ontology].items()}
    table = pd.DataFrame(columns)
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


# ---------------------------------------------------------------- the committed predictor

TOP_K = 5
BLAST_RECIPE = {"program": "blastp", "evalue": 1e-3, "max_target_seqs": 100,
                "scores": "bitscore-weighted share of the hits annotated with each term (common.blast_scores)",
                "why_blastp": "the notebooks search thousands of proteins with DIAMOND (common.diamond_hits), which "
                              "scans the whole pool in about 30 s however few the queries; blastp answers a few "
                              "sequences in seconds, with the same E-value and hit limit"}


def weights_file(ontology: str) -> str:
    return f"{NETWORK}_{ontology}.pt"


def terms_file(ontology: str) -> str:
    return f"{NETWORK}_{ontology}_terms.npz"


def swissprot_source(root=DATA_ROOT) -> str:
    marker = Path(root) / "swissprot2014" / MARKER
    package = json.loads(marker.read_text()).get("source") if marker.is_file() else None
    return f"Swiss-Prot January 2014 with GO annotations, Debian package {package or SWISSPROT_PACKAGE}"


def accessions_digest(accessions) -> str:
    return hashlib.sha256("\n".join(map(str, accessions)).encode()).hexdigest()


def reference_recipe(ontology: str, profile: str, seed: int = 0, root=DATA_ROOT) -> dict:
    """Which proteins the predictor's alignment searches: those `load_split` aligns against (the whole pool in the
    full profile), as counts, seed and a digest of their accessions (reads the prepared training pool)."""
    pool = training_proteins(ontology, root)
    count = PROFILES[profile]["pool"] or len(pool)
    chosen, _ = pool_selection(len(pool), count, seed=seed)
    return {"source": swissprot_source(root),
            "pool": f"proteins.training_proteins({ontology!r}): the proteins annotated in the ontology, mapped into "
                    "TALE's label space, TALE's test accessions and sequences removed",
            "pool_size": len(pool), "seed": seed, "count": count,
            "selection": "common.pool_selection(pool_size, count, seed=seed): the first `count` proteins of "
                         "numpy.random.default_rng(seed).permutation(pool_size), in pool order (all of them when "
                         "count = pool_size)",
            "accessions_sha256": accessions_digest(pool.accessions[chosen])}


def exported_alpha(ontology: str, results: dict) -> dict:
    """The deployed network's weight in the combination for `ontology` (results.json `alpha`) and its origin."""
    alpha = results.get("alpha", {}).get(ontology)
    if alpha is None:
        raise ValueError(f"results.json has no alpha for {ontology}: run the Challenge notebook's results cell first")
    return {"weight": alpha, "source": "results.json alpha: chosen by the Challenge notebook (common.blend_weight) "
                                       "by Fmax on the CAFA3 proteins, with DIAMOND's alignment scores"}


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json` and each ontology's label space (`terms_file`) for the networks the notebook saved
    there (`weights_file`), from the prepared data and the results.json beside `folder` (the weights `alpha`)."""
    folder = Path(folder)
    profile = "smoke" if smoke else "full"
    results = load_results(folder.parent) if (folder.parent / "results.json").is_file() else {}
    ontologies = {}
    for ontology in ONTOLOGIES:
        weights = folder / weights_file(ontology)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: the notebook's results-and-checkpoints cell saves it")
        go, config = load_ontology(ontology), make_config(NETWORK, ontology, profile)
        model = build_model(config, go)
        model.load_state_dict(load_half(weights))  # the weights fit the configuration and the label space
        save_arrays(folder / terms_file(ontology), **go.to_arrays())
        ontologies[ontology] = {
            "weights": {"file": weights.name, "bytes": weights.stat().st_size,
                        "format": "state dict with fp16 floats: torch.load(weights_only=True), cast to fp32 "
                                  "(mlkit.train.load_half)"},
            "config": config, "parameters": parameter_count(model),
            "terms": {"file": terms_file(ontology), "count": len(go), "roots": [go.ids[r] for r in go.roots],
                      "arrays": "ids and names (GO ids and term names in label order), parents_* and ancestors_* "
                                "(CSR: term i's are index[offsets[i]:offsets[i + 1]]; ancestors include the term)"},
            "blend": exported_alpha(ontology, results),
            "reference": reference_recipe(ontology, profile),
            "test": {key: results.get(metric, {}).get(name, {}).get(ontology) for key, metric, name in (
                ("fmax", "fmax", NETWORK), ("fmax_combination", "fmax", "combination"),
                ("aupr", "aupr", NETWORK), ("smin", "smin", NETWORK))}}
    return write_manifest(
        folder, challenge="tale", task="protein function: GO terms of protein sequences, per ontology",
        network=NETWORK, ontology_order=list(ONTOLOGIES), ontologies=ontologies,
        model={"class": "networks.TALE", "builder": "common.build_model(config, go)",
               "output": "one logit per GO term of the ontology; scores are their sigmoid"},
        input={"format": "FASTA text or files, or one bare sequence (common.read_records)",
               "cleaning": "whitespace removed, upper-cased, a final '*' dropped",
               "alphabet": RESIDUES, "min_length": MIN_LENGTH,
               "nucleotide_check": f"refused when more than {NUCLEOTIDE_SHARE:.0%} of the letters are "
                                   f"{'/'.join(NUCLEOTIDES)}",
               "max_length": MAX_LENGTH, "long_sequences": f"the network reads the first {MAX_LENGTH} residues "
                                                           "(as in evaluation); BLAST the whole sequence"},
        scoring={"consistency": "common.consistent: each term scores at least as high as its descendants (max over "
                                "the ontology, deepest terms first), before the blend",
                 "blend": "common.ensemble: weight * network + (1 - weight) * alignment where the search finds a "
                          "hit, the network alone elsewhere (weights per ontology under ontologies.<name>.blend)",
                 "blast": BLAST_RECIPE | {"database": "built on first use into tale/runs/blast_reference/ from the "
                                                      "prepared data (ontologies.<name>.reference: the whole pool); "
                                                      "without blastp or the data the network scores alone, and "
                                                      "says so"},
                 "top_k": TOP_K, "top_terms": "the best-scoring terms below the ontology's root (every protein "
                                              "has the root)"},
        source={"data": results.get("data"), "profile": results.get("profile", profile),
                "train_minutes": {o: results.get("train_minutes", {}).get(f"{NETWORK}_{o}") for o in ONTOLOGIES},
                "results": "results.json (fmax, aupr, smin, alpha)"},
        smoke=smoke)


def reference_unavailable(ontology: str, root=DATA_ROOT) -> str:
    """Why the BLAST reference of `ontology` cannot be built here ("" when it can): no blastp, or data not
    prepared (never downloads anything)."""
    if not (shutil.which("blastp") and shutil.which("makeblastdb")):
        return "blastp not found (install ncbi-blast+)"
    root = Path(root)
    pool = (root / "cache" / "tale" / f"train_{ontology}.npz").is_file() or (
        root / "swissprot2014" / MARKER).is_file()
    if not (pool and (root / "tale" / MARKER).is_file()):
        return "its training proteins are not prepared (python -m mlkit.datasets tale; see tale/proteins.py)"
    return ""


def blast_reference(ontology: str, recipe: dict, folder=REFERENCE_FOLDER, root=DATA_ROOT) -> tuple[Proteins, Path,
                                                                                                    float]:
    """(reference proteins, BLAST database, seconds its build took now: 0 when it was there) of `recipe`
    (`reference_recipe`), built once into `folder` from the prepared data and checked against the recipe."""
    target = Path(folder) / f"{ontology}-{recipe['count']}-{recipe['accessions_sha256'][:12]}"
    if not (target / "done.json").is_file():
        started = time.perf_counter()
        pool = training_proteins(ontology, root)
        train, _ = pool_selection(len(pool), recipe["count"], seed=recipe["seed"])
        if len(pool) != recipe["pool_size"] or accessions_digest(pool.accessions[train]) != recipe[
                "accessions_sha256"]:
            raise DataError(f"the prepared {ontology} training pool ({len(pool):,} proteins) does not give the "
                            "predictor's reference proteins (their digest differs)")
        reference = pool if recipe["count"] == len(pool) else pool.subset(train)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        tmp.chmod(0o755)
        try:
            reference.save(tmp / "proteins.npz")
            make_blast_database(reference, tmp / "db")
            (tmp / "done.json").write_text(json.dumps(recipe | {"seconds": time.perf_counter() - started}))
            if (target / "done.json").is_file():  # another process finished first
                shutil.rmtree(tmp)
            else:
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Proteins.load(target / "proteins.npz"), target / "db", time.perf_counter() - started
    return Proteins.load(target / "proteins.npz"), target / "db", 0.0


class TalePredictor:
    """The saved `tale_minor` network of each ontology, hierarchy-consistent scores, combined with BLAST against the
    whole 2014 pool where the data and blastp are there: `predict(inputs)` gives one row per record and ontology."""

    def __init__(self, manifest: dict, models: dict, ontologies: dict, blast: bool = True,
                 reference_folder=REFERENCE_FOLDER, data_root=DATA_ROOT):
        self.manifest, self.models, self.ontologies = manifest, models, ontologies
        self.blast, self.reference_folder, self.data_root = blast, Path(reference_folder), Path(data_root)
        self.references: dict[str, tuple[Proteins, Path] | None] = {}
        self.without_blast: dict[str, str] = {}
        self.build_seconds: dict[str, float] = {}

    def reference(self, ontology: str) -> tuple[Proteins, Path] | None:
        """The BLAST reference of `ontology` (built on first use), or None with the reason in `without_blast`."""
        if ontology not in self.references:
            reason = "BLAST switched off" if not self.blast else reference_unavailable(ontology, self.data_root)
            reference = None
            if not reason:
                try:
                    proteins, database, seconds = blast_reference(
                        ontology, self.manifest["ontologies"][ontology]["reference"], self.reference_folder,
                        self.data_root)
                    reference = proteins, database
                    if seconds:
                        self.build_seconds[ontology] = seconds
                except (DataError, OSError, subprocess.CalledProcessError) as e:
                    reason = f"the BLAST reference could not be built ({e})"
            self.references[ontology], self.without_blast[ontology] = reference, reason
        return self.references[ontology]

    def predict(self, inputs) -> pd.DataFrame:
        """FASTA text or files, a bare sequence, or a list of them: columns record, sequence (its name), length,
        ontology, top term, score, top terms (GO id, name, score), scored by, error."""
        records = read_records(inputs)
        rows = []
        for ontology, model in self.models.items():
            reference = self.reference(ontology) if any(not r["error"] for r in records) else None
            proteins, database = reference or (None, None)
            rows += go_term_rows(records, model, self.ontologies[ontology], self.manifest["scoring"]["top_k"],
                                 NETWORK, proteins, self.manifest["ontologies"][ontology]["blend"]["weight"],
                                 database, self.without_blast.get(ontology, ""))
        order = {ontology: i for i, ontology in enumerate(self.models)}
        rows.sort(key=lambda row: (row["record"], order[row["ontology"]]))
        return go_term_table(rows)

    def __repr__(self) -> str:
        terms = " + ".join(f"{o.upper()} {len(go):,}" for o, go in self.ontologies.items())
        blend = ", ".join(f"{o} {self.manifest['ontologies'][o]['blend']['weight']:g}" for o in self.ontologies)
        if not self.blast:
            blast = "network alone (BLAST switched off)"
        elif self.references and not any(self.references.values()):
            blast = f"network alone: {'; '.join(sorted(set(self.without_blast.values())))}"
        else:
            built = ", ".join(f"{o} {s:.0f} s" for o, s in self.build_seconds.items())
            blast = f"BLAST blend (network weight {blend})" + (f"; reference built on first use: {built}" if built
                                                               else "")
        return f"tale {NETWORK} predictor, {terms} GO terms, top {self.manifest['scoring']['top_k']}, {blast}"


def load_predictor(folder=CHECKPOINTS, blast: bool = True, **where) -> TalePredictor:
    """The predictor `export_predictor` described in `folder` (its manifest, label spaces and fp16 weights only;
    the BLAST reference is built from the data on first use, `blast=False`: the networks alone)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    models, ontologies = {}, {}
    for ontology in manifest["ontology_order"]:
        entry = manifest["ontologies"][ontology]
        paths = named_files(folder, entry["weights"]["file"], entry["terms"]["file"])
        ontologies[ontology] = go = Ontology.from_arrays(ontology, load_arrays(paths[1]))
        models[ontology] = build_model(entry["config"], go)
        models[ontology].load_state_dict(load_half(paths[0]))
        models[ontology].eval()
    return TalePredictor(manifest, models, ontologies, blast, **where)


DEMO_PROTEINS = {  # two of TALE's 2020 test proteins (data/tale/ours)
    "Q6I621": "MWKGFLSKLPRKTSASGRGADLDSGQCSNGAGNGNPIQRTSSCGSIPSGRSTSTIKRMSSAIFPSSVVAGIEPLVSFKDVPNSEKQNLFVSKLNLCCAVF"
              "DFSDPNKSSAEKDIKRQTLLDLIDYVDSSSSRFSEAVIAASSRMFAVNLFRVFPPNYRSSSSGGGEGEEEEPMFEPAWCHLQLVYELLLKFIGSSSLDAK"
              "VGKKYFDHSFIVKLLNLLDSEDPRERDCLKTILHRIYGKFMVHRPFIRKAVSNIFYHFVFETDRHNGIAELLEVFGSVISGFALPLKEEHKIFLWRVLVP"
              "LHKPKSVGVYLQQLTYCVTQFIEKDPKLASSVIIGLLRYWPITNSQKEVMFLSEIEEILETISTAEFQKCMVPLFRRIAQCIKSSHFQVAERALFIWNND"
              "NVISLIAQNRQMIMPIIVPALEHNSQNHWNQAVLNLTDNVKKMFSEMDDVLFSACLVKYKEDEERQASLESKRRLTWEKLESAASFQPVTGHTAVLVGRQ"
              "PSANLIATLI",
    "Q7L8J4": "MAELRQVPGGRETPQGELRPEVVEDEVPRSPVAEEPGGGGSSSSEAKLSPREEEELDPRIQEELEHLNQASEEINQVELQLDEARTTYRRILQESARKLN"
              "TQGSHLGSCIEKARPYYEARRLAKEAQQETQKAALRYERAVSMHNAAREMVFVAEQGVMADKNRLDPTWQEMLNHATCKVNEAEEERLRGEREHQRVTRL"
              "CQQAEARVQALQKTLRRAIGKSRPYFELKAQFSQILEEHKAKVTELEQQVAQAKTRYSVALRNLEQISEQIHARRRGGLPPHPLGPRRSSPVGAEAGPED"
              "MEDGDSGIEGAEGAGLEEGSSLGPGPAPDTDTLSLLSLRTVASDLQKCDSVEHLRGLSDHVSLDGQELGTRSGGRRGSDGGARGGRHQRSVSL",
}


def demo_inputs() -> list[str]:
    """Two inputs: FASTA text with a test protein and the records that must be refused with a reason (DNA, too
    short, letters outside the alphabet, an empty record, a header alone), and a second test protein pasted bare,
    in lower case, cut into lines, with a final stop '*'."""
    fasta = (f">Q6I621 (a TALE test protein)\n{DEMO_PROTEINS['Q6I621']}\n"
             ">DNA, not a protein\nATGGCTAGCTAGGATCCGATCGATCGTAGCTAGCTAGGCTAACGTTAGC\n"
             ">too short\nMKTLL\n"
             ">letters outside the alphabet\nMKT1LLJVAGHWQ\n"
             ">empty record\n\n"
             ">a header alone")
    bare = DEMO_PROTEINS["Q7L8J4"].lower()
    return [fasta, "\n".join(bare[i:i + 60] for i in range(0, len(bare), 60)) + "*\n"]
