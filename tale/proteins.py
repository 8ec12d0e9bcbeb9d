"""tale/proteins.py: TALE's test sets and GO ontologies, Swiss-Prot 2014 training proteins, residue encoding.

TALE ships its data as Python pickles. They are read here once, with an unpickler that refuses every
class (the files hold only lists, dicts, strings and numbers), and converted to JSON; the rest of the
pipeline never unpickles anything.
"""
import gzip
import json
import pickle
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlkit.datasets import DATA_ROOT, MARKER, DataError, prepare
from mlkit.runtime import atomic_path

ONTOLOGIES = ("mf", "cc")
ASPECTS = {"mf": "MFO", "cc": "CCO", "bp": "BPO"}
RESIDUES = "ARNDCEQGHILKMFPSTWYVBOUXZ"  # TALE's vocabulary order; 0 is padding
_CODE_OF_BYTE = np.zeros(256, dtype=np.uint8)
_CODE_OF_BYTE[np.frombuffer(RESIDUES.encode(), np.uint8)] = np.arange(1, len(RESIDUES) + 1)
VOCAB_SIZE = len(RESIDUES) + 1
SWISSPROT_PACKAGE = "metastudent-data"  # Debian: Swiss-Prot January 2014 with GO annotations (GPL-2+)


# ---------------------------------------------------------------- TALE's files

class _NoClassesUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: TALE's pickles hold only lists and dicts")


def read_pickle(path: Path):
    """A TALE pickle of plain lists/dicts; any class reference (code execution) is refused."""
    with open(path, "rb") as f:
        return _NoClassesUnpickler(f).load()


def tale_folder(root=DATA_ROOT) -> Path:
    """TALE's `data/ours` split (test sets, ontologies), checksum-verified by `prepare`."""
    return prepare("tale", root) / "ours"


def _cache(root) -> Path:
    return Path(root) / "cache" / "tale"


def _converted(name: str, convert, root) -> dict | list:
    """JSON made once from TALE's pickles (kept in the data cache)."""
    path = _cache(root) / f"{name}.json"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(convert()))
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Ontology:
    """TALE's label space for one ontology: term `i` is `ids[i]`; `ancestors[i]` includes `i` itself."""
    name: str
    ids: list[str]
    names: list[str]
    parents: list[list[int]]
    ancestors: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def index(self) -> dict[str, int]:
        return {go: i for i, go in enumerate(self.ids)}

    @cached_property
    def edges(self) -> np.ndarray:
        """(parent, child) pairs: the hierarchy regulariser's constraints (TALE's `*_label_regular_1.npy`)."""
        return np.array([(p, c) for c, ps in enumerate(self.parents) for p in ps], dtype=np.int64)

    def ancestor_matrix(self) -> np.ndarray:
        """[terms, max ancestors] indices padded with `len(self)`: TALE's `*_label_matrix_1_sparse.npy`."""
        width = max(map(len, self.ancestors))
        matrix = np.full((len(self), width), len(self), dtype=np.int64)
        for i, row in enumerate(self.ancestors):
            matrix[i, :len(row)] = row
        return matrix

    def propagate(self, terms) -> list[int]:
        """Sorted indices of `terms` (indices) and all their ancestors."""
        return sorted({a for t in terms for a in self.ancestors[t]})

    @property
    def roots(self) -> list[int]:
        """The terms without a parent (the ontology's root: every annotated protein has it)."""
        return [i for i, parents in enumerate(self.parents) if not parents]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The label space as plain arrays (npz without pickle): ids, names, parents and ancestors as CSR
        index arrays (`*_offsets` [terms + 1] into `*_index`)."""
        arrays = {"ids": np.array(self.ids), "names": np.array(self.names)}
        for key in ("parents", "ancestors"):
            lists = getattr(self, key)
            arrays[f"{key}_offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32)
            arrays[f"{key}_index"] = np.array([i for x in lists for i in x], dtype=np.int32)
        return arrays

    @staticmethod
    def from_arrays(name: str, arrays: dict[str, np.ndarray]) -> "Ontology":
        def lists(key):
            offsets, index = arrays[f"{key}_offsets"], arrays[f"{key}_index"].tolist()
            return [index[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

        return Ontology(name, arrays["ids"].tolist(), arrays["names"].tolist(), lists("parents"), lists("ancestors"))


def load_ontology(ontology: str, root=DATA_ROOT) -> Ontology:
    def convert():
        graph = read_pickle(tale_folder(root) / f"{ontology}_go_1.pickle")
        by_index = sorted(graph.items(), key=lambda item: item[1]["ind"])
        index = {go: i for i, (go, _) in enumerate(by_index)}
        assert [term["ind"] for _, term in by_index] == list(range(len(graph))), "TALE's term indices have gaps"
        return {"ids": list(index), "names": [t["name"] for _, t in by_index],
                "parents": [sorted(index[p] for p in t["father"]) for _, t in by_index],
                "ancestors": [sorted(set(t["label"])) for _, t in by_index]}

    return Ontology(ontology, **_converted(f"{ontology}_ontology", convert, root))


def load_test_set(ontology: str, root=DATA_ROOT) -> list[dict]:
    """TALE's `ours` test proteins (2020 annotations): {accession, sequence, labels (propagated indices)}."""
    def convert():
        return [{"accession": p["ac"], "sequence": p["seq"], "labels": sorted(set(p["label"]))}
                for p in read_pickle(tale_folder(root) / f"test_seq_{ontology}")]

    return _converted(f"test_{ontology}", convert, root)


def load_cafa3_set(ontology: str, root=DATA_ROOT) -> list[dict]:
    """TALE's CAFA3 test proteins (annotated 2016-2017, after the 2014 pool and before `ours`): {sequence, terms
    (the GO ids TALE lists, unpropagated)}. They carry no accession."""
    def convert():
        return [{"sequence": p["seq"], "terms": sorted(set(p["GO"]))}
                for p in read_pickle(tale_folder(root).parent / "CAFA3" / f"test_seq_{ontology}")]

    return _converted(f"cafa3_{ontology}", convert, root)


def test_identities(root=DATA_ROOT) -> dict[str, list[str]]:
    """Accessions and sequences of TALE's `ours` test proteins (all three ontologies): kept out of training."""
    def convert():
        proteins = [p for path in tale_folder(root).glob("test_seq_*") for p in read_pickle(path)]
        return {"accessions": sorted({p["ac"] for p in proteins}), "sequences": sorted({p["seq"] for p in proteins})}

    return _converted("test_identities", convert, root)


# ---------------------------------------------------------------- Swiss-Prot 2014 (Debian metastudent-data)

def _run(command: list[str], **kwargs) -> str:
    try:
        return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs).stdout
    except FileNotFoundError as e:
        raise DataError(f"{command[0]} not found: install Debian's ncbi-blast+ (`make setup` does)") from e
    except subprocess.CalledProcessError as e:
        raise DataError(f"{' '.join(command)} failed: {e.stderr.strip()}") from e


def swissprot_2014(root=DATA_ROOT) -> Path:
    """`data/swissprot2014/`: {MFO,CCO,BPO}.tsv.gz (accession, GO terms, sequence) and the 2014 GO graph files,
    read out of Debian's `metastudent-data` package with `apt-get download` and `blastdbcmd`."""
    folder = Path(root) / "swissprot2014"
    if (folder / MARKER).exists():
        return folder
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        _run(["apt-get", "download", SWISSPROT_PACKAGE], cwd=tmp)
        deb = next(tmp.glob(f"{SWISSPROT_PACKAGE}_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "x")])
        dataset = next((tmp / "x").glob("usr/share/metastudent-data/dataset_*"))
        staging = tmp / "swissprot2014"
        staging.mkdir()
        for aspect in tqdm(ASPECTS.values(), desc="blastdbcmd"):
            table = _run(["blastdbcmd", "-db", str(dataset / aspect / "goasp.fasta"), "-entry", "all",
                          "-outfmt", "%t\t%s"])
            with gzip.open(staging / f"{aspect}.tsv.gz", "wt", compresslevel=3) as f:
                f.write(table.replace("|", "\t"))  # title "accession|GO:a,GO:b" -> two columns
        for name in ("fullTransitiveClosureGO.txt", "nameMapping.txt"):
            shutil.copy(dataset / name, staging / name)
        (staging / MARKER).write_text(json.dumps({"source": deb.name}))
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(folder)
    return folder


def go_2014_ancestors(root=DATA_ROOT) -> dict[str, set[str]]:
    """is_a ancestors of every GO term in the 2014 GO (the package's transitive closure)."""
    ancestors: dict[str, set[str]] = {}
    with open(swissprot_2014(root) / "fullTransitiveClosureGO.txt") as f:
        for line in f:
            term, _, ancestor, _ = line.split("\t")
            ancestors.setdefault(term, set()).add(ancestor)
    return ancestors


@dataclass(frozen=True)
class Proteins:
    """Proteins with sequences and propagated labels, stored flat (safe to cache as .npz)."""
    accessions: np.ndarray  # str
    residues: np.ndarray  # uint8 codes of all sequences, concatenated
    residue_offsets: np.ndarray  # int64 [n + 1]
    labels: np.ndarray  # int32 term indices of all proteins, concatenated
    label_offsets: np.ndarray  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.accessions)

    def codes(self, i: int) -> np.ndarray:
        return self.residues[self.residue_offsets[i]:self.residue_offsets[i + 1]]

    def sequence(self, i: int) -> str:
        return decode(self.codes(i))

    def terms(self, i: int) -> np.ndarray:
        return self.labels[self.label_offsets[i]:self.label_offsets[i + 1]]

    def label_matrix(self, num_terms: int) -> np.ndarray:
        """Dense bool [proteins, terms]."""
        matrix = np.zeros((len(self), num_terms), dtype=bool)
        rows = np.repeat(np.arange(len(self)), np.diff(self.label_offsets))
        matrix[rows, self.labels] = True
        return matrix

    def term_frequency(self, num_terms: int) -> np.ndarray:
        """Share of the proteins annotated with each term."""
        return np.bincount(self.labels, minlength=num_terms) / len(self)

    def subset(self, index) -> "Proteins":
        return Proteins.from_lists([self.accessions[i] for i in index], [self.codes(i) for i in index],
                                   [self.terms(i) for i in index])

    @staticmethod
    def from_lists(accessions, codes, labels) -> "Proteins":
        def flat(arrays, dtype):
            offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
            values = np.concatenate([np.asarray(a, dtype) for a in arrays]) if arrays else np.zeros(0, dtype)
            return values, offsets

        residues, residue_offsets = flat(codes, np.uint8)
        labels, label_offsets = flat(labels, np.int32)
        return Proteins(np.asarray(accessions, dtype=str), residues, residue_offsets, labels, label_offsets)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            np.savez(tmp, **self.__dict__)

    @staticmethod
    def load(path: Path) -> "Proteins":
        with np.load(path) as f:  # allow_pickle stays False: plain arrays only
            return Proteins(**{k: f[k] for k in f.files})


def encode(sequence: str) -> np.ndarray:
    """Residue codes (1..25) of a protein sequence; a clear error for anything else."""
    sequence = "".join(sequence.split()).upper()
    if not sequence:
        raise ValueError("empty protein sequence")
    codes = _CODE_OF_BYTE[np.frombuffer(sequence.encode("utf-8"), np.uint8)]
    if not codes.all():
        invalid = "".join(sorted(set(sequence) - set(RESIDUES)))
        raise ValueError(f"invalid residue letter(s) {invalid!r}: expected the amino-acid alphabet {RESIDUES}")
    return codes


def decode(codes: np.ndarray) -> str:
    return np.frombuffer(RESIDUES.encode(), np.uint8)[np.asarray(codes) - 1].tobytes().decode()


def test_proteins(ontology: str, root=DATA_ROOT) -> Proteins:
    proteins = load_test_set(ontology, root)
    return Proteins.from_lists([p["accession"] for p in proteins], [encode(p["sequence"]) for p in proteins],
                               [p["labels"] for p in proteins])


def cafa3_proteins(ontology: str, root=DATA_ROOT) -> Proteins:
    """TALE's CAFA3 test proteins in `ours`' label space (mapped as `training_proteins` maps the 2014 annotations),
    without those whose sequence is one of `ours`' test proteins, and without those left with no known term."""
    go, closure = load_ontology(ontology, root), go_2014_ancestors(root)
    ours = set(test_identities(root)["sequences"])
    accessions, codes, labels = [], [], []
    for i, protein in enumerate(load_cafa3_set(ontology, root)):
        known = known_terms(protein["terms"], go, closure)
        if known and protein["sequence"] not in ours:
            accessions.append(f"cafa3-{ontology}-{i}")
            codes.append(encode(protein["sequence"]))
            labels.append(go.propagate(known))
    return Proteins.from_lists(accessions, codes, labels)


def known_terms(terms, go: Ontology, closure: dict[str, set[str]]) -> list[int]:
    """Indices of the terms of `go` among `terms` and their 2014 is_a ancestors (terms `go` does not know: dropped)."""
    expanded = {a for t in terms for a in {t} | closure.get(t, set())}
    return [go.index[t] for t in expanded if t in go.index]


def training_proteins(ontology: str, root=DATA_ROOT) -> Proteins:
    """Swiss-Prot 2014 proteins annotated in `ontology`, mapped into TALE's label space.

    Each annotated 2014 term is expanded to its 2014 is_a ancestors, the ones TALE's ontology knows are
    kept and propagated with TALE's own ancestor lists; proteins left without a label, and every protein
    whose accession or exact sequence is in TALE's test sets, are dropped.
    """
    path = _cache(root) / f"train_{ontology}.npz"
    if path.exists():
        return Proteins.load(path)
    go = load_ontology(ontology, root)
    closure, test = go_2014_ancestors(root), test_identities(root)
    test_accessions, test_sequences = set(test["accessions"]), set(test["sequences"])
    accessions, codes, labels = [], [], []
    with gzip.open(swissprot_2014(root) / f"{ASPECTS[ontology]}.tsv.gz", "rt") as f:
        for line in tqdm(f, desc=f"map {ontology} annotations", unit=" proteins"):
            accession, terms, sequence = line.rstrip("\n").split("\t")
            if accession in test_accessions or sequence in test_sequences:
                continue
            known = known_terms(terms.split(","), go, closure)
            if known:
                accessions.append(accession)
                codes.append(encode(sequence))
                labels.append(go.propagate(known))
    proteins = Proteins.from_lists(accessions, codes, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    proteins.save(path)
    return proteins
