"""Unit tests of the TALE challenge's data structures, networks and pipeline (toy data only, CPU, tiny models)."""
import math
import os
import pickle
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import load_challenge

import mlkit.train
from mlkit.train import load_state

torch.set_num_threads(1)

common = load_challenge("tale")  # tale/common.py; it imports `proteins` and `networks` as top-level modules
proteins = load_challenge("tale", "proteins")
networks = load_challenge("tale", "networks")

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


def test_read_sequences_bare_sequence_and_empty_input():
    assert common.read_sequences("MKVLLA") == [("query", "MKVLLA")]
    [(name, body)] = common.read_sequences("MKV\nLLA\n")
    assert name == "query" and proteins.decode(common.encode(body)) == "MKVLLA"
    for empty in ("", "  \n "):
        with pytest.raises(ValueError, match="no sequence"):
            common.read_sequences(empty)


def test_predict_go_terms_reports_bad_sequences_without_raising():
    go = toy_ontology()
    table = common.predict_go_terms(tiny_tale(go=go), go, ">good\nMKVLAAGITW\n>bad\nMK1Z*\n>good2\nacd efg", top=4)
    assert set(table.columns) == {"sequence", "rank", "go_id", "name", "score", "error"}
    bad = table[table["sequence"] == "bad"]
    assert len(bad) == 1 and "invalid residue" in bad["error"].iloc[0] and pd.isna(bad["rank"].iloc[0])
    for name in ("good", "good2"):
        good = table[table["sequence"] == name]
        assert good["rank"].tolist() == [1, 2, 3, 4] and (good["error"] == "").all()
        assert sorted(good["go_id"]) == go.ids and set(good["name"]) == set(go.names)
        assert good["score"].is_monotonic_decreasing and good["score"].between(0, 1).all()
        score = dict(zip(good["go_id"], good["score"]))
        for parent, child in go.edges:  # consistent scores
            assert score[go.ids[parent]] >= score[go.ids[child]]
    assert len(common.predict_go_terms(tiny_tale(go=go), go, "MKVLAAGITW", top=2)) == 2


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

