"""Unit tests of the TALE challenge's data structures, networks and pipeline (toy data only, CPU, tiny models)."""
import math
import os
import pickle
import shutil
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import mlkit.predictors as mlkit_predictors
import mlkit.train
from mlkit.datasets import DataError
from mlkit.train import load_state
from tale import common, networks, proteins

torch.set_num_threads(1)

TINY = {"dim": 8, "layers": 1, "heads": 2, "ffn_dim": 8}


def toy_ontology():
    #   0
    #  / \
    # 1   3
    # |
    # 2
    return proteins.Ontology(name="toy", ids=["GO:0000000", "GO:0000001", "GO:0000002", "GO:0000003"],
                             names=["root", "middle", "leaf", "side"],
                             parents=[[], [0], [1], [0]], ancestors=[[0], [0, 1], [0, 1, 2], [0, 3]])


def toy_proteins(cls=None):
    """Three proteins; subject `i` of the BLAST tests is protein `i`."""
    cls = cls or common.Proteins
    return cls.from_lists(["P1", "P2", "P3"], [common.encode("MKV"), common.encode("ACDEFG"), common.encode("W")],
                          [[0, 1], [0, 3], [0, 1, 2]])


def random_proteins(n, seed, min_length=5, max_length=30, terms=4):
    rng = np.random.default_rng(seed)
    go = toy_ontology()
    codes = [rng.integers(1, proteins.VOCAB_SIZE, rng.integers(min_length, max_length + 1)) for _ in range(n)]
    labels = [go.propagate([int(rng.integers(terms))]) for _ in range(n)]
    return common.Proteins.from_lists([f"R{i}" for i in range(n)], codes, labels)


def tiny_tale(seed=0, go=None):
    torch.manual_seed(seed)
    return networks.TALE((go or toy_ontology()).ancestor_matrix(), **TINY, dropout=0.0).eval()


# ---------------------------------------------------------------- residue encoding

def test_encode_round_trips_through_decode():
    codes = proteins.encode(proteins.RESIDUES)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, np.arange(1, len(proteins.RESIDUES) + 1))
    assert proteins.decode(codes) == proteins.RESIDUES
    assert proteins.decode(proteins.encode("MKVLAAGW")) == "MKVLAAGW"


def test_encode_accepts_lowercase_and_whitespace():
    np.testing.assert_array_equal(proteins.encode(" mk v\nla\tAg \r\n"), proteins.encode("MKVLAAG"))


@pytest.mark.parametrize("empty", ["", "  \n\t"])
def test_encode_refuses_an_empty_sequence(empty):
    with pytest.raises(ValueError, match="empty"):
        proteins.encode(empty)


@pytest.mark.parametrize("sequence, bad", [("MKV1A", "'1'"), ("MK*", "'*'"), ("JMK", "'J'"), ("m1k*j", "'*1J'")])
def test_encode_names_invalid_letters(sequence, bad):
    with pytest.raises(ValueError, match="invalid residue") as error:
        proteins.encode(sequence)
    assert bad in str(error.value)


# ---------------------------------------------------------------- TALE's pickles

class _MakesADirectory:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("payload", ["function", "ordered_dict", "code_execution"])
def test_read_pickle_refuses_class_references(tmp_path, payload):
    victim = tmp_path / "pwned"
    obj = {"function": os.system, "ordered_dict": OrderedDict(a=1),
           "code_execution": [{"ok": 1}, _MakesADirectory(str(victim))]}[payload]
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        proteins.read_pickle(path)
    assert not victim.exists()


def test_read_pickle_loads_plain_lists_and_dicts(tmp_path):
    obj = {"GO:0000001": {"ind": 0, "name": "x", "father": [], "label": [0], "weight": 0.5, "flag": None},
           "list": [1, 2.5, "three", [True, False], (4, 5)]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"plain{protocol}.pickle"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert proteins.read_pickle(path) == obj


# ---------------------------------------------------------------- ontology

def test_ontology_edges_are_parent_child_pairs():
    go = toy_ontology()
    assert len(go) == 4 and go.index == {"GO:0000000": 0, "GO:0000001": 1, "GO:0000002": 2, "GO:0000003": 3}
    assert go.edges.shape == (3, 2) and go.edges.dtype == np.int64
    assert {tuple(edge) for edge in go.edges.tolist()} == {(0, 1), (1, 2), (0, 3)}


def test_ancestor_matrix_is_padded_with_the_number_of_terms():
    np.testing.assert_array_equal(toy_ontology().ancestor_matrix(),
                                  [[0, 4, 4], [0, 1, 4], [0, 1, 2], [0, 3, 4]])


def test_propagate_adds_every_ancestor_once_sorted():
    go = toy_ontology()
    assert go.propagate([2]) == [0, 1, 2]
    assert go.propagate([3, 2]) == [0, 1, 2, 3]
    assert go.propagate([1, 1, 0]) == [0, 1]
    assert go.propagate([]) == []


# ---------------------------------------------------------------- proteins

def test_proteins_from_lists_codes_terms_and_label_matrix():
    p = toy_proteins(proteins.Proteins)
    assert len(p) == 3
    assert [p.sequence(i) for i in range(3)] == ["MKV", "ACDEFG", "W"]
    np.testing.assert_array_equal(p.codes(1), proteins.encode("ACDEFG"))
    assert [p.terms(i).tolist() for i in range(3)] == [[0, 1], [0, 3], [0, 1, 2]]
    np.testing.assert_array_equal(p.residue_offsets, [0, 3, 9, 10])
    np.testing.assert_array_equal(p.label_matrix(5), [[1, 1, 0, 0, 0], [1, 0, 0, 1, 0], [1, 1, 1, 0, 0]])
    assert p.label_matrix(5).dtype == bool


def test_proteins_subset_reorders_everything_together():
    sub = toy_proteins(proteins.Proteins).subset([2, 0])
    assert sub.accessions.tolist() == ["P3", "P1"]
    assert [sub.sequence(i) for i in range(2)] == ["W", "MKV"]
    assert [sub.terms(i).tolist() for i in range(2)] == [[0, 1, 2], [0, 1]]
    assert len(toy_proteins(proteins.Proteins).subset([])) == 0


def test_proteins_save_load_round_trip_without_pickle(tmp_path):
    p = toy_proteins(proteins.Proteins)
    path = tmp_path / "proteins.npz"
    p.save(path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["proteins.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as f:  # plain arrays: readable without pickle
        assert set(f.files) == {"accessions", "residues", "residue_offsets", "labels", "label_offsets"}
    loaded = proteins.Proteins.load(path)
    for field in p.__dict__:
        np.testing.assert_array_equal(getattr(loaded, field), getattr(p, field))
        assert getattr(loaded, field).dtype == getattr(p, field).dtype
    assert [loaded.sequence(i) for i in range(3)] == ["MKV", "ACDEFG", "W"]


# ---------------------------------------------------------------- networks

def test_sinusoidal_positions():
    positions = networks.sinusoidal_positions(5, 8)
    assert positions.shape == (5, 8)
    torch.testing.assert_close(positions[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # timescales run geometrically from 1 to 1e4
    torch.testing.assert_close(positions[1, [0, 3, 4, 7]],
                               torch.tensor([math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)]))


def test_tale_maps_codes_to_one_logit_per_term():
    model = tiny_tale()
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 0, 0, 0, 0], [25, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        logits = model(codes)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def padded_pair(seed, short=12, long=20):
    generator = torch.Generator().manual_seed(seed)
    alone = torch.randint(1, proteins.VOCAB_SIZE, (1, short), generator=generator)
    batch = torch.zeros(2, long, dtype=torch.long)
    batch[0, :short] = alone
    batch[1] = torch.randint(1, proteins.VOCAB_SIZE, (long,), generator=generator)
    return alone, batch


@pytest.mark.parametrize("seed", [0, 1])
def test_tale_logits_do_not_depend_on_padding(seed):
    model = tiny_tale(seed)
    alone, batch = padded_pair(seed)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0], model(alone)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(batch)[1], model(batch[1:])[0], atol=1e-5, rtol=1e-5)


def test_deepgocnn_shape_and_short_sequences():
    torch.manual_seed(0)
    model = networks.DeepGOCNN(4, filters=4, kernels=(2, 5)).eval()
    with torch.no_grad():
        assert model(torch.tensor([[3, 4, 0], [1, 0, 0]])).shape == (2, 4)  # shorter than the largest kernel


@pytest.mark.parametrize("length", [1, 4, 9])  # shorter than, between and longer than the kernels
def test_deepgocnn_logits_do_not_depend_on_padding(length):
    torch.manual_seed(0)
    model = networks.DeepGOCNN(4, filters=4, kernels=(2, 5)).eval()
    codes = torch.randint(1, proteins.VOCAB_SIZE, (1, length))
    with torch.no_grad():
        alone = model(codes)
        for extra in (1, 3, 11):
            torch.testing.assert_close(model(F.pad(codes, (0, extra))), alone, atol=1e-6, rtol=1e-6)


def test_hierarchical_label_embedding_sums_ancestor_rows():
    go = toy_ontology()
    torch.manual_seed(0)
    embedding = networks.HierarchicalLabelEmbedding(go.ancestor_matrix(), 8)
    with torch.no_grad():
        out = embedding()
        assert out.shape == (4, 8)
        for term, ancestors in enumerate(go.ancestors):
            torch.testing.assert_close(out[term], math.sqrt(8) * embedding.weight[ancestors].sum(0))


def test_tale_loss_without_regulariser_is_binary_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 4), (torch.rand(3, 4) < 0.5).float()
    loss = networks.TALELoss(toy_ontology().edges, weight=0.0)
    torch.testing.assert_close(loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    torch.testing.assert_close(loss(logits, targets.bool()), F.binary_cross_entropy_with_logits(logits, targets))


def test_tale_loss_regulariser_is_zero_for_consistent_scores():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # every parent >= its children
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    loss = networks.TALELoss(toy_ontology().edges, weight=5.0)
    torch.testing.assert_close(loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_tale_loss_regulariser_penalises_children_above_parents():
    # probabilities 0.5, 0.5, 0.75, 0.25: only edge 1 -> 2 is violated, by 0.25; mean over 1 x 3 edges
    logits = torch.tensor([[0.0, 0.0, math.log(3), -math.log(3)]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss = networks.TALELoss(toy_ontology().edges, weight=2.0)
    expected = F.binary_cross_entropy_with_logits(logits, targets) + 2.0 * 0.25 / 3
    torch.testing.assert_close(loss(logits, targets), expected)


# ---------------------------------------------------------------- the training pool

def test_protein_loader_training_crops_and_targets():
    # protein i carries term i only, so a target row tells which protein a window came from
    lengths = [5, 30, 17, 40, 3, 16]
    rng = np.random.default_rng(0)
    codes = [rng.integers(1, proteins.VOCAB_SIZE, n) for n in lengths]
    pool = common.Proteins.from_lists([f"P{i}" for i in range(6)], codes, [[i] for i in range(6)])
    torch.manual_seed(0)
    loader = common.ProteinLoader(pool, 6, batch_size=2, crop=16, per_epoch=5)
    assert len(loader) == 3
    seen = []
    for _ in range(3):  # epochs
        for batch_codes, targets in loader:
            assert batch_codes.shape[1] <= 16 and batch_codes.dtype == torch.long and targets.shape[1] == 6
            for row, target in zip(batch_codes, targets):
                assert target.sum() == 1
                i = int(target.argmax())
                window = row[row != 0].numpy()
                assert len(window) == min(lengths[i], 16)
                assert (row[len(window):] == 0).all()  # padding only at the end
                starts = [s for s in range(lengths[i] - len(window) + 1)
                          if np.array_equal(codes[i][s:s + len(window)], window)]
                assert starts, f"window of protein {i} is not a piece of it"
                seen.append(i)
    assert len(seen) == 15 and all(len(set(seen[e * 5:(e + 1) * 5])) == 5 for e in range(3))


def test_protein_loader_evaluation_is_length_ordered_and_cut():
    pool = random_proteins(7, seed=1, min_length=3, max_length=40)
    lengths = np.diff(pool.residue_offsets)
    loader = common.ProteinLoader(pool, 4, batch_size=3, max_length=20)
    order = np.argsort(lengths, kind="stable")
    rows = [(c, t) for batch_codes, targets in loader for c, t in zip(batch_codes, targets)]
    assert len(rows) == 7
    for (row, target), i in zip(rows, order):
        n = min(lengths[i], 20)
        np.testing.assert_array_equal(row[:n].numpy(), pool.codes(i)[:n])
        assert (row[n:] == 0).all()
        np.testing.assert_array_equal(target.numpy(), pool.label_matrix(4)[i])
    assert [len(c) for c, _ in loader] == [3, 2, 2]


# ---------------------------------------------------------------- scores

def test_consistent_lifts_parents_to_their_descendants():
    go = toy_ontology()
    scores = np.array([[0.1, 0.5, 0.9, 0.2],
                       [0.9, 0.3, 0.1, 0.4]], dtype=np.float32)
    fixed = common.consistent(scores, go)
    np.testing.assert_array_equal(fixed, np.array([[0.9, 0.9, 0.9, 0.2], [0.9, 0.3, 0.1, 0.4]], np.float32))
    assert scores[0, 0] == np.float32(0.1)  # input untouched


def test_consistent_is_the_max_over_descendants():
    go = toy_ontology()
    scores = np.random.default_rng(0).random((20, 4))
    fixed = common.consistent(scores, go)
    for parent, child in go.edges:
        assert (fixed[:, parent] >= fixed[:, child]).all()
    for term in range(4):
        descendants = [d for d in range(4) if term in go.ancestors[d]]
        np.testing.assert_array_equal(fixed[:, term], scores[:, descendants].max(1))
    np.testing.assert_array_equal(common.consistent(fixed, go), fixed)  # already consistent: unchanged


def test_ensemble_uses_the_network_alone_without_a_blast_hit():
    rng = np.random.default_rng(0)
    network = rng.random((3, 4))
    blast = np.array([[0, 0, 0, 0], [1, 0.5, 0, 0], [0, 0, 0, 0.2]])
    combined = common.ensemble(network, blast, 0.3)
    np.testing.assert_array_equal(combined[0], network[0])
    np.testing.assert_allclose(combined[1:], 0.3 * network[1:] + 0.7 * blast[1:])


def test_blast_scores_are_bitscore_weighted_label_shares():
    train = toy_proteins()  # terms: 0 -> [0, 1], 1 -> [0, 3], 2 -> [0, 1, 2]
    hits = pd.DataFrame({"query": [0, 0, 2, 2], "subject": [0, 1, 2, 1], "bitscore": [30.0, 10.0, 5.0, 20.0]})
    scores = common.blast_scores(hits, train, 4, 3)
    assert scores.shape == (3, 4) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [[1.0, 0.75, 0.0, 0.25],   # 30/40 of [0, 1], 10/40 of [0, 3]
                                        [0.0, 0.0, 0.0, 0.0],     # no hit
                                        [1.0, 0.2, 0.2, 0.8]],    # 5/25 of [0, 1, 2], 20/25 of [0, 3]
                               rtol=1e-6)
    assert scores.max() <= 1.0
    top = common.blast_scores(hits, train, 4, 3, top_hit=True)
    np.testing.assert_array_equal(top, [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]])


def test_naive_scores_are_term_frequencies():
    scores = common.naive_scores(toy_proteins(), 4, 5)
    assert scores.shape == (5, 4)
    np.testing.assert_allclose(scores, np.tile([1.0, 2 / 3, 1 / 3, 1 / 3], (5, 1)), rtol=1e-6)


# ---------------------------------------------------------------- new sequences

def test_read_sequences_fasta_records(tmp_path):
    text = ">sp|P1 first protein\nMKV\nLLA\n\n>P2\nACD\n>\nWW\n"
    records = common.read_sequences(text)
    assert [name for name, _ in records] == ["sp|P1 first protein", "P2", "sequence 3"]
    assert [proteins.decode(common.encode(body)) for _, body in records] == ["MKVLLA", "ACD", "WW"]
    path = tmp_path / "query.fasta"
    path.write_text(text)
    assert common.read_sequences(path) == records
    assert common.read_sequences(str(path)) == records


def test_read_sequences_bare_sequence_header_alone_and_empty_input():
    assert common.read_sequences("MKVLLA") == [("query", "MKVLLA")]
    [(name, body)] = common.read_sequences("MKV\nLLA\n")
    assert name == "query" and proteins.decode(common.encode(body)) == "MKVLLA"
    assert common.read_sequences(">only a header") == [("only a header", "")]
    assert common.read_sequences("MKVLL\n>second\nACDEF") == [("query", "MKVLL"), ("second", "ACDEF")]
    for empty in ("", "  \n "):
        assert [body.strip() for _, body in common.read_sequences(empty)] == [""]


PROTEIN = "MKVLAAGITWQEHLRPSDYFNK"  # 22 residues, every letter a common amino acid


@pytest.mark.parametrize("length", [12, 255, 256, 300, 4_095, 4_096, 40_000])
def test_a_pasted_bare_sequence_of_any_length_is_one_record(length):
    sequence = (PROTEIN * (length // len(PROTEIN) + 1))[:length]
    [record] = common.read_records(sequence)  # never taken for a file name, however long
    assert record == {"name": "query", "sequence": sequence, "error": ""}


@pytest.mark.parametrize("text", [PROTEIN + "*", PROTEIN.lower(), " ".join(PROTEIN), PROTEIN[:9] + "\n" + PROTEIN[9:],
                                  PROTEIN[:7] + "\r\n\t" + PROTEIN[7:].lower() + "*\n",
                                  ">named\n" + PROTEIN[:11] + "\n" + PROTEIN[11:] + "*\n"])
def test_stop_codon_lowercase_and_whitespace_are_cleaned(text):
    [record] = common.read_records(text)
    assert record["sequence"] == PROTEIN and record["error"] == ""


@pytest.mark.parametrize("text, message", [
    ("ATGGCTAGCTAGGATCCGATCGATCGTAGCTAGC", "DNA/RNA"),
    ("AUGGCUAGCUAGGAUCCGAUCGAUCGUAGCUAGCN", "DNA/RNA"),
    (">dna\natggctagct agcatcgatc\ngatcgatcga", "DNA/RNA"),
    ("MKTLL", "too short"),
    ("MKVLAAGIT", "too short"),
    ("MKT1LLJVAGHWQ", "invalid residue letter(s) '1J'"),
    ("MKVLA*AGITWQE", "invalid residue letter(s) '*'"),
    ("Hello, is this a protein?", "invalid residue"),
    (">empty record\n\n>next\n" + PROTEIN, "empty sequence"),
    (">a header alone", "empty sequence"),
    ("", "empty sequence"),
])
def test_non_protein_records_get_a_clear_error(text, message):
    record = common.read_records(text)[0]
    assert record["sequence"] == "" and message in record["error"]


def test_read_records_keeps_going_after_unreadable_inputs(tmp_path):
    records = common.read_records([PROTEIN, None, tmp_path / "missing.fasta", ">a\n" + PROTEIN + "\n>b\nMK"])
    assert [r["name"] for r in records] == ["query", "None", "missing.fasta", "a", "b"]
    assert [bool(r["error"]) for r in records] == [False, True, True, False, True]
    assert "cannot read" in records[1]["error"] and "cannot read" in records[2]["error"]


def test_a_protein_with_nucleotide_letters_below_the_threshold_is_accepted():
    sequence = "ACGT" * 4 + "MKVW"  # 80% A/C/G/T
    assert common.clean_sequence(sequence) == sequence


def test_predict_go_terms_gives_one_row_per_record_and_reports_bad_ones():
    go = toy_ontology()
    text = ">good\nMKVLAAGITW\n>bad\nMK1Z*\n>good2\nacd efg hikl*"
    table = common.predict_go_terms(tiny_tale(go=go), go, text, top=2)
    assert list(table.columns) == common.GO_TERM_COLUMNS
    assert table["sequence"].tolist() == ["good", "bad", "good2"] and table["record"].tolist() == [0, 1, 2]
    assert "invalid residue" in table.loc[1, "error"] and table.loc[1, "top terms"] == ""
    assert pd.isna(table.loc[1, "score"]) and pd.isna(table.loc[1, "length"])
    assert table["length"].tolist()[::2] == [10, 10]
    for i in (0, 2):
        terms = table.loc[i, "top terms"].split("; ")
        assert len(terms) == 2 and not any(t.startswith("GO:0000000 ") for t in terms)  # the root is left out
        assert table.loc[i, "top term"] == terms[0].rsplit(" ", 1)[0] and table.loc[i, "error"] == ""
        assert table.loc[i, "scored by"] == "network alone"
    nothing = common.predict_go_terms(tiny_tale(go=go), go, ["", ">x", "ACGTACGTACGTACGT"])
    assert len(nothing) == 3 and nothing["error"].str.len().gt(0).all()


def test_ontology_round_trips_through_plain_arrays(tmp_path):
    go = toy_ontology()
    mlkit_predictors.save_arrays(tmp_path / "terms.npz", **go.to_arrays())
    again = proteins.Ontology.from_arrays("toy", mlkit_predictors.load_arrays(tmp_path / "terms.npz"))
    assert again == go and again.roots == [0]
    np.testing.assert_array_equal(again.ancestor_matrix(), go.ancestor_matrix())


def test_pool_selection_is_seeded_sorted_and_disjoint():
    train, val = common.pool_selection(100, 30, 5, seed=0)
    assert len(train) == 30 and len(val) == 5 and not set(train) & set(val)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again, _ = common.pool_selection(100, 30, seed=0)
    np.testing.assert_array_equal(again, train)


def test_blend_weight_picks_the_weight_with_the_best_fmax():
    y_true = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)
    network = np.full((3, 4), 0.5)
    weight, fmaxes = common.blend_weight(y_true, network, y_true.astype(float))  # BLAST is right: trust it
    assert weight == 0.0 and len(fmaxes) == len(common.BLEND_WEIGHTS) and fmaxes[0] == max(fmaxes) == 1.0


# ---------------------------------------------------------------- BLAST reference and the committed predictor

needs_blast = pytest.mark.skipif(not shutil.which("blastp"), reason="needs BLAST+ (ncbi-blast+)")


def toy_pool():
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ARNDCEQGHILKMFPSTWYV"), 60)) for _ in range(6)]
    return common.Proteins.from_lists([f"T{i}" for i in range(6)], [common.encode(s) for s in sequences],
                                      [[0, 1], [0, 3], [0, 1, 2], [0, 3], [0, 1], [0]])


def toy_recipe(pool, count=4):
    train, _ = common.pool_selection(len(pool), count)
    return {"pool_size": len(pool), "seed": 0, "count": count,
            "accessions_sha256": common.accessions_digest(pool.accessions[train])}


@needs_blast
def test_blast_reference_is_built_once_and_found_by_blast(tmp_path, monkeypatch):
    pool = toy_pool()
    monkeypatch.setattr(common, "training_proteins", lambda ontology, root: pool)
    recipe = toy_recipe(pool)
    reference, database, seconds = common.blast_reference("mf", recipe, tmp_path)
    assert len(reference) == 4 and seconds > 0
    again, _, seconds_again = common.blast_reference("mf", recipe, tmp_path)
    assert seconds_again == 0.0 and again.accessions.tolist() == reference.accessions.tolist()
    query = reference.sequence(2)
    go = toy_ontology()
    rows = common.go_term_rows(common.read_records([query, PROTEIN * 3]), tiny_tale(go=go), go, 2, "toy",
                               reference, 0.0, database)
    assert rows[0]["scored by"] == "toy + BLAST (network weight 0)" and rows[0]["score"] == 1.0
    assert rows[1]["scored by"] == "toy (no BLAST hit)"
    with pytest.raises(DataError, match="digest"):
        common.blast_reference("cc", recipe | {"accessions_sha256": "0" * 64}, tmp_path)


needs_diamond = pytest.mark.skipif(not shutil.which("diamond"), reason="needs DIAMOND (diamond-aligner)")


@needs_diamond
def test_diamond_finds_a_protein_in_its_database_and_hits_parse_like_blast(tmp_path):
    pool = toy_pool()
    database = common.make_diamond_database(pool, tmp_path / "pool")
    assert database.name == "pool.dmnd" and database.is_file()
    queries = pool.subset([2, 4])
    hits = common.diamond_hits(pool, queries, database=database)
    assert list(hits.columns) == ["query", "subject", "bitscore"]
    best = hits.loc[hits.groupby("query")["bitscore"].idxmax()]
    assert best["subject"].tolist() == [2, 4]  # each query's best hit is itself
    assert common.without_identical(hits, pool, queries).empty  # random sequences: no other homologue


def test_hit_table_keeps_the_best_hsp_of_each_pair():
    hits = common.hit_table("0\t3\t50.1\n0\t3\t71.0\n1\t2\t30.5\textra\n")
    assert hits.to_dict("records") == [{"query": 0, "subject": 3, "bitscore": 71.0},
                                       {"query": 1, "subject": 2, "bitscore": 30.5}]


def test_without_identical_drops_only_hits_on_the_query_s_own_sequence():
    reference = toy_proteins()
    queries = common.Proteins.from_lists(["Q1", "Q2"], [common.encode("ACDEFG"), common.encode("MKVL")], [[], []])
    hits = pd.DataFrame({"query": [0, 0, 1], "subject": [1, 0, 0], "bitscore": [9.0, 5.0, 7.0]})
    assert common.without_identical(hits, reference, queries).to_dict("list") == {
        "query": [0, 1], "subject": [0, 0], "bitscore": [5.0, 7.0]}


def test_known_terms_expand_to_2014_ancestors_and_drop_unknown_terms():
    go = toy_ontology()
    closure = {"GO:0000002": {"GO:0000001", "GO:0000000"}, "GO:9999999": {"GO:0000003"}}
    assert sorted(proteins.known_terms(["GO:0000002"], go, closure)) == [0, 1, 2]
    assert proteins.known_terms(["GO:9999999"], go, closure) == [3]  # an obsolete term still gives its ancestor
    assert proteins.known_terms(["GO:8888888"], go, closure) == []


def test_evaluate_reports_fmax_without_the_root():
    y_true = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0]], dtype=bool)
    scores = np.array([[1.0, 0.8, 0.1, 0.3], [1.0, 0.2, 0.0, 0.6], [1.0, 0.9, 0.4, 0.5]])
    result = common.evaluate(y_true, scores, np.ones(4), bootstrap=5, roots=[0])
    assert result["fmax_no_root"] == pytest.approx(common.fmax(y_true[:, 1:], scores[:, 1:]))
    assert result["fmax_no_root"] < result["fmax"]  # the root, right on every protein, lifts Fmax
    assert "fmax_no_root" not in common.evaluate(y_true, scores, np.ones(4), bootstrap=5)


def test_fmax_table_has_both_conventions_per_ontology_and_benchmark():
    result = {"fmax": 0.5, "fmax_no_root": 0.4}
    evaluations = {part: {o: {"naive": result, "alignment": result} for o in common.ONTOLOGIES}
                   for part in ("test", "cafa3")}
    table = common.fmax_table(evaluations, {"test": "ours", "cafa3": "CAFA3"})
    assert table.index.tolist() == ["naive", "alignment"]
    assert table.columns.tolist()[:4] == [("mf", "ours", "Fmax"), ("mf", "ours", "Fmax, no root"),
                                          ("mf", "CAFA3", "Fmax"), ("mf", "CAFA3", "Fmax, no root")]


def test_compact_scores_keep_every_score_a_threshold_can_see():
    scores = np.array([[0.0, 0.009, 0.01, 0.5], [0.99, 0.0, 0.2, 0.0101]], dtype=np.float32)
    compact = common.compact_scores(scores)
    assert compact["terms"].dtype == np.uint16 and len(compact["values"]) == 5
    expected = np.where(scores >= common.SCORE_FLOOR, scores, 0)
    np.testing.assert_array_equal(common.dense_scores(compact), expected)
    y_true = np.array([[1, 1, 0, 1], [1, 0, 1, 0]], dtype=bool)
    assert common.fmax(y_true, common.dense_scores(compact)) == common.fmax(y_true, scores)


def test_model_scores_are_recorded_and_read_back_without_the_run(tmp_path, monkeypatch):
    runs, split = tmp_path / "runs", {"go": toy_ontology(), "test": random_proteins(3, seed=1)}
    predicted = np.array([[0.5, 0.2, 0.001, 0.3]] * 3, dtype=np.float32)
    monkeypatch.setattr(common, "trained_model", lambda *args: (None, {}))
    monkeypatch.setattr(common, "predict", lambda model, proteins, num_terms: predicted)
    first = common.model_scores("tale_port", "mf", "smoke", split, runs)
    assert (tmp_path / "records").is_dir() and len(list((tmp_path / "records").glob("*-test.npz"))) == 1
    shutil.rmtree(runs)  # a fresh clone: records, no runs
    monkeypatch.setattr(common, "predict", lambda *args: pytest.fail("recomputed although recorded"))
    np.testing.assert_array_equal(common.model_scores("tale_port", "mf", "smoke", split, runs), first)


def test_network_run_is_recorded_once_and_retrained_on_request(tmp_path, monkeypatch):
    calls = []

    def trained(name, ontology, profile, split, runs):
        calls.append(name)
        return tiny_tale(go=toy_ontology()), {"history": [{"epoch": 0, "val_loss": 1.0}], "train_seconds": 6.0}

    monkeypatch.setattr(common, "trained_model", trained)
    runs = tmp_path / "runs"
    info = common.network_run("tale_port", "mf", "smoke", {}, runs)
    again = common.network_run("tale_port", "mf", "smoke", {}, runs)
    assert calls == ["tale_port"] and info["provenance"] == "trained now" and again["provenance"].startswith("record")
    assert again["parameters"] == info["parameters"] > 0 and again["history"] == info["history"]
    common.network_run("tale_port", "mf", "smoke", {}, runs, retrain=True)
    assert calls == ["tale_port"] * 2


def test_search_hits_are_recorded_with_their_timing(tmp_path, monkeypatch):
    found = pd.DataFrame({"query": [0], "subject": [1], "bitscore": [42.0]})
    monkeypatch.setattr(common, "blast_hits", lambda reference, queries: found)
    hits, done = common.search_hits("blast", "mf", toy_proteins(), toy_proteins(), tmp_path / "runs", "test")
    assert hits.equals(found) and done["queries"] == 3 and done["database_seconds"] is None
    assert "CPU" in done["hardware"]
    monkeypatch.setattr(common, "blast_hits", lambda *args: pytest.fail("searched again although recorded"))
    again, _ = common.search_hits("blast", "mf", toy_proteins(), toy_proteins(), tmp_path / "runs", "test")
    assert again.equals(found) and (tmp_path / "records" / "blast-mf-3-test.csv.gz").is_file()


@pytest.fixture(scope="module")
def predictor():
    return common.load_predictor(blast=False)  # tale/checkpoints: the networks alone, no data needed


def test_predictor_gives_one_row_per_record_and_ontology(predictor):
    inputs = [">short protein\n" + PROTEIN * 2 + "\n>dna\n" + "ACGT" * 10 + "\n>header only", PROTEIN.lower() + "*"]
    table = predictor.predict(inputs)
    assert list(table.columns) == common.GO_TERM_COLUMNS
    assert table["record"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and table["ontology"].tolist() == ["mf", "cc"] * 4
    good = table[table["error"] == ""]
    assert good["record"].tolist() == [0, 0, 3, 3] and good["top term"].str.startswith("GO:").all()
    assert good["score"].between(0, 1).all() and (good["scored by"] == "tale_minor alone: BLAST switched off").all()
    for _, row in good.iterrows():
        terms = row["top terms"].split("; ")
        assert len(terms) == 5 and not any(root in row["top terms"] for root in ("GO:0003674", "GO:0005575"))
    assert table.loc[2, "error"].startswith("looks like DNA/RNA") and table.loc[4, "error"].startswith("empty")


def test_predictor_survives_a_batch_with_nothing_readable(predictor):
    table = predictor.predict(["", ">x", "MKT1", None])
    assert len(table) == 8 and table["error"].str.len().gt(0).all() and (table["top terms"] == "").all()


def test_predictor_without_blastp_or_data_scores_with_the_network_alone_and_says_so(predictor, tmp_path,
                                                                                     monkeypatch):
    parts = predictor.manifest, predictor.models, predictor.ontologies
    without_data = common.TalePredictor(*parts, data_root=tmp_path, reference_folder=tmp_path / "reference")
    table = without_data.predict(PROTEIN * 2)
    assert table["scored by"].str.contains("not prepared").all() and (table["error"] == "").all()
    assert "network alone" in repr(without_data) and not (tmp_path / "reference").exists()
    monkeypatch.setattr(common.shutil, "which", lambda name: None)
    no_blastp = common.TalePredictor(*parts, reference_folder=tmp_path / "reference")
    assert no_blastp.predict(PROTEIN * 2)["scored by"].str.contains("blastp not found").all()


def test_predictor_manifest_describes_both_ontologies(predictor):
    manifest = predictor.manifest
    assert manifest["ontology_order"] == list(common.ONTOLOGIES) == list(predictor.models)
    for ontology, go in predictor.ontologies.items():
        entry = manifest["ontologies"][ontology]
        assert entry["terms"]["count"] == len(go) == predictor.models[ontology].head.out_features
        assert entry["terms"]["roots"] == [go.ids[r] for r in go.roots]
        assert entry["blend"]["weight"] in common.BLEND_WEIGHTS and entry["blend"]["source"]
        assert {"seed", "count", "pool_size", "accessions_sha256", "source"} <= set(entry["reference"])
        assert entry["config"] == common.make_config(common.NETWORK, ontology, "full")
    assert repr(predictor).startswith("tale tale_minor predictor, MF 6,381 + CC 2,574 GO terms")


def test_missing_predictor_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json is missing"):
        common.load_predictor(tmp_path)
    for name in ("predictor.json", common.weights_file("mf")):
        shutil.copy(common.CHECKPOINTS / name, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{common.terms_file('mf')} is missing"):
        common.load_predictor(tmp_path)
    (tmp_path / common.weights_file("mf")).unlink()
    with pytest.raises(FileNotFoundError, match=f"{common.weights_file('mf')} is missing: the notebook's"):
        common.export_predictor(tmp_path)


def test_demo_inputs_hold_good_and_bad_records(predictor):
    table = predictor.predict(common.demo_inputs())
    assert len(table) == 2 * 7
    assert table.groupby("record")["error"].first().astype(bool).tolist() == [False] + [True] * 5 + [False]


# ---------------------------------------------------------------- training resumes exactly

CONFIG = {"model": "tale", "size": TINY, "epochs": 2, "per_epoch": 8, "crop": 16, "batch_size": 4, "lr": 1e-3,
          "schedule": "cosine", "regulariser": 1.0, "seed": 0}


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(mlkit.train, "_tensorboard", lambda run_dir, start_epoch: None)  # TensorBoard is slow
    split = {"go": toy_ontology(), "train": random_proteins(12, seed=2), "val": random_proteins(4, seed=3)}
    reference, reference_history = common.train_model(CONFIG, tmp_path / "a", split)

    train_epoch, epochs_run = mlkit.train._train_epoch, []

    def counting(crash_on=None):
        def train_one_epoch(*args, **kwargs):
            epochs_run.append(1)
            if len(epochs_run) == crash_on:
                raise RuntimeError("simulated crash")
            return train_epoch(*args, **kwargs)
        return train_one_epoch

    monkeypatch.setattr(mlkit.train, "_train_epoch", counting(crash_on=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        common.train_model(CONFIG, tmp_path / "b", split)
    assert load_state(tmp_path / "b" / "last.pt")["epoch"] == 0
    assert not (tmp_path / "b" / "history.json").exists()

    epochs_run.clear()
    monkeypatch.setattr(mlkit.train, "_train_epoch", counting())
    torch.manual_seed(123)  # resume must not depend on the RNG state it is started in
    resumed, history = common.train_model(CONFIG, tmp_path / "b", split)
    assert len(epochs_run) == 1  # only the second epoch is trained after resuming

    def without_timing(rows):
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]

    assert len(history) == 2 and without_timing(history) == without_timing(reference_history)
    final, expected = load_state(tmp_path / "b" / "final.pt"), load_state(tmp_path / "a" / "final.pt")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()))
    # and training changed the weights at all
    untrained = common.build_model(CONFIG, split["go"]).state_dict()
    assert not all(torch.equal(untrained[k], expected[k]) for k in expected)


def test_prior_bias_starts_the_outputs_at_the_training_frequencies(tmp_path, monkeypatch):
    monkeypatch.setattr(mlkit.train, "_tensorboard", lambda run_dir, start_epoch: None)
    split = {"go": toy_ontology(), "train": random_proteins(12, seed=2), "val": random_proteins(4, seed=3)}
    config = CONFIG | {"epochs": 1, "lr": 0.0, "prior_bias": True}  # lr 0: the weights stay as initialised
    model, _ = common.train_model(config, tmp_path, split)
    frequency = split["train"].label_matrix(4).mean(0)
    torch.testing.assert_close(torch.sigmoid(model.head.bias.detach()).double(),
                               torch.as_tensor(frequency).double().clamp(1e-6, 1 - 1e-6), atol=1e-6, rtol=1e-6)



def test_the_exported_blend_weight_is_the_alpha_results_json_holds():
    blend = common.exported_alpha("mf", {"alpha": {"mf": 0.3, "cc": 0.1}})
    assert blend["weight"] == 0.3 and "CAFA3" in blend["source"]
    with pytest.raises(ValueError, match="no alpha for cc"):
        common.exported_alpha("cc", {"alpha": {"mf": 0.3}})


def test_summarize_tables_every_model_per_ontology():
    def evaluations(offset):
        return {o: {m: {"fmax": i / 10 + (o == "cc") / 100 + offset, "fmax_no_root": i / 10, "aupr": 0.3, "smin": 9.0,
                        "fmax_ci": [0.1, 0.2], "proteins": 7} for i, m in enumerate(common.SUMMARIZED)}
                for o in common.ONTOLOGIES}
    alpha = {("tale_minor", o): 0.6 for o in common.ONTOLOGIES}
    results = common.summarize(profile="smoke", evaluations={"test": evaluations(0), "cafa3": evaluations(0.001)},
                               alpha=alpha, infos={("tale_minor", "mf"): {"train_seconds": 600.0}})
    assert results["fmax"]["blast"] == {"mf": 0.1, "cc": 0.11} and results["fmax_ci"]["naive"]["cc"] == [0.1, 0.2]
    assert results["cafa3_fmax"]["blast"] == {"mf": 0.101, "cc": 0.111}
    assert results["fmax_no_root"]["blast"]["cc"] == 0.1
    assert results["alpha"] == {"mf": 0.6, "cc": 0.6}
    assert results["train_minutes"] == {"tale_minor_mf": 10.0} and results["cafa3_proteins"] == {"mf": 7, "cc": 7}
    assert results["headline"] == {
        "Fmax mf (combination / alignment_naive / tale_minor / naive)": "0.600 / 0.300 / 0.500 / 0.000",
        "Fmax cc (combination / alignment_naive / tale_minor / naive)": "0.610 / 0.310 / 0.510 / 0.010"}
    assert results["data"].endswith("[smoke subset]")
