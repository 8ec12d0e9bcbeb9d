"""mlm/common.py: articles, vocabulary, masking, the fixed evaluation set, metrics, models, fill-mask."""
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlkit.train import parameter_count
from mlm import common

WIKI = "\n".join([  # WikiText's layout: a space at both ends of every line
    " ", " = First article = ", " ", " the cat sat on the mat . ", " ", " = = A section = = ",
    " ", " The cat ran . ", " = Second = ", " ", " a dog sat . ",
])


def test_articles_start_at_titles_and_keep_their_sections(tmp_path):
    (tmp_path / "wiki.tokens").write_text(WIKI)
    articles = common.read_articles(tmp_path / "wiki.tokens")
    assert len(articles) == 2
    assert articles[0][:4] == ["=", "first", "article", "="]
    assert ["=", "=", "a", "section", "=", "="] == articles[0][11:17]
    assert articles[1] == ["=", "second", "=", "a", "dog", "sat", "."]


@pytest.mark.parametrize("line, title", [(" = Title = ", True), (" = M @-@ 82 ( road ) = ", True),
                                         (" = = Section = = ", False), (" = = = Sub = = = ", False),
                                         (" the = sign ", False)])
def test_only_single_equals_lines_are_titles(line, title):
    assert common.is_title(line) is title


def test_hold_out_splits_whole_articles_reproducibly():
    articles = [[str(i)] for i in range(50)]
    train, held = common.hold_out(articles, 0.1, seed=0)
    assert len(held) == 5 and len(train) == 45
    assert sorted(train + held) == sorted(articles)
    assert common.hold_out(articles, 0.1, seed=0) == (train, held)


def test_vocab_orders_by_frequency_and_maps_unknown_words_to_unk():
    vocab = common.Vocab("b a b c b a <unk>".split())
    assert vocab.itos[:2] == [common.UNK, common.MASK]
    assert vocab.itos[2:] == ["b", "a", "c"]
    assert vocab.encode(["a", "zebra", "<unk>"]).tolist() == [3, common.UNK_ID, common.UNK_ID]
    assert vocab.frequencies().tolist() == [1, 0, 3, 2, 1]


def test_batchify_cuts_the_stream_into_contiguous_rows():
    rows = common.batchify(torch.arange(23), 5)
    assert rows.shape == (5, 4)
    assert rows[1].tolist() == [4, 5, 6, 7]


def test_fixed_eval_set_is_deterministic_and_masks_ten_percent():
    ids = torch.randint(2, 100, (35 * 200,))
    ids[::17] = common.UNK_ID
    (inputs, windows), (again, again_windows) = common.fixed_eval_set(ids), common.fixed_eval_set(ids)
    assert torch.equal(inputs, again) and torch.equal(windows, again_windows)
    assert torch.equal(windows.flatten(), ids)
    masked = inputs[:, 0] == common.MASK_ID
    assert masked.sum() == round(0.1 * ids.numel())
    scored = inputs[:, 1].bool()
    assert torch.equal(scored, masked & (ids.view(-1, 35) != common.UNK_ID))  # <unk> targets are not scored
    targets = torch.cat([t for _, t in common.eval_batches((inputs, windows), batch_size=64)])
    assert torch.equal(targets, ids.view(-1, 35)[scored])
    assert not torch.equal(common.fixed_eval_set(ids, seed=1)[0], inputs)


def test_dev_passes_mask_disjoint_positions_and_score_every_position_once():
    ids = torch.randint(2, 100, (35 * 20,))
    inputs, windows = common.fixed_eval_set(ids, passes=10)
    assert torch.equal(windows, ids.view(-1, 35).repeat(10, 1))
    masked = (inputs[:, 0] == common.MASK_ID).view(10, -1)
    assert torch.equal(masked.sum(0), torch.ones(ids.numel(), dtype=torch.long))  # disjoint, and all covered
    assert torch.equal(inputs[:20], common.fixed_eval_set(ids)[0])  # the first pass is the one-pass set
    with pytest.raises(ValueError, match="do not fit"):
        common.fixed_eval_set(ids, passes=11)


def test_ppmi_vectors_give_words_in_the_same_contexts_the_same_direction():
    rng = np.random.default_rng(0)
    context = rng.integers(10, 300, (4000, 2))
    middle = rng.choice([2, 3, 4], 4000)  # 2 and 3 share every context distribution; 4 only follows word 5
    middle[middle == 4] = 2
    stream = np.stack([context[:, 0], middle, context[:, 1]], 1).ravel()
    ids = torch.tensor(np.r_[stream, [5, 4, 5, 4, 5, 4]])
    vectors = common.ppmi_vectors(ids, 301, dim=20)
    cosine = torch.nn.functional.cosine_similarity
    assert vectors.shape == (301, 20) and vectors[[0, 1, 6]].abs().max() < 1e-6  # never-seen words
    assert cosine(vectors[2], vectors[3], dim=0) > 0.9
    assert cosine(vectors[2], vectors[4], dim=0) < 0.5


def test_bert_corruption_splits_masked_words_80_10_10():
    ids = torch.randint(2, 1000, (400_000,))
    generator = torch.Generator().manual_seed(0)
    masked = common.choose_masked(ids.shape, generator=generator)
    corrupted = common.corrupt(ids, masked, 1000, bert=True, generator=generator)
    assert masked.float().mean() == pytest.approx(0.1, abs=0.002)
    assert torch.equal(corrupted[~masked], ids[~masked])
    as_mask = (corrupted[masked] == common.MASK_ID).float().mean()
    unchanged = (corrupted[masked] == ids[masked]).float().mean()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1 + 0.1 / 998, abs=0.01)  # a random word can equal the original
    assert (corrupted[masked] >= 2).sum() == masked.sum() - (corrupted[masked] == common.MASK_ID).sum()


def test_plain_corruption_masks_every_chosen_word():
    ids = torch.randint(2, 50, (1000,))
    masked = common.choose_masked(ids.shape, generator=torch.Generator().manual_seed(0))
    corrupted = common.corrupt(ids, masked, 50, bert=False)
    assert torch.equal(corrupted == common.MASK_ID, masked)


@pytest.mark.parametrize("dynamic", [False, True])
def test_training_masks_are_static_or_redrawn_each_epoch(dynamic):
    batches = common.MaskedBatches(torch.randint(2, 50, (2000,)), columns=4, bptt=10, dynamic=dynamic,
                                   loss_on="masked", vocab_size=50)
    first, second = (torch.cat([x[:, 0].flatten() for x, _ in batches]) for _ in range(2))
    assert torch.equal(first, second) is not dynamic


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_training_masks_the_requested_share_of_words(rate):
    batches = common.MaskedBatches(torch.randint(2, 50, (200_000,)), loss_on="masked", vocab_size=50, rate=rate)
    inputs = torch.cat([x[:, 0].flatten() for x, _ in batches])
    assert (inputs == common.MASK_ID).float().mean() == pytest.approx(rate, abs=0.005)


@pytest.mark.parametrize("loss_on", ["all", "masked"])
def test_training_batches_predict_all_or_only_masked_positions(loss_on):
    ids = torch.randint(2, 50, (2000,))
    batches = common.MaskedBatches(ids, columns=4, bptt=10, loss_on=loss_on, vocab_size=50)
    assert len(batches) == len(list(batches)) == 50
    x, targets = next(iter(batches))
    assert x.shape == (4, 2, 10)
    predict = x[:, 1].bool()
    assert torch.equal(predict, torch.ones_like(predict) if loss_on == "all" else x[:, 0] == common.MASK_ID)
    assert torch.equal(targets, common.batchify(ids, 4)[:, :10][predict])


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: int(x[:, 1].sum())]


def test_masked_metrics_match_a_brute_force_computation():
    torch.manual_seed(0)
    logits, targets = torch.randn(30, 12), torch.randint(0, 12, (30,))
    x = common.pack(torch.zeros(3, 10, dtype=torch.long), torch.ones(3, 10, dtype=torch.bool))
    metrics = common.masked_metrics(Fixed(logits), [(x, targets)])
    ce = F.cross_entropy(logits, targets).item()
    ranks = [(logits[i] > logits[i, targets[i]]).sum().item() for i in range(30)]
    assert metrics["cross_entropy"] == pytest.approx(ce, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(ce), rel=1e-6)
    assert metrics["top1"] == sum(r == 0 for r in ranks) / 30
    assert metrics["top5"] == sum(r < 5 for r in ranks) / 30
    assert common.top5_accuracy(logits, targets) == pytest.approx(metrics["top5"])


def test_unigram_predicts_training_frequencies():
    vocab = common.Vocab("a a a b".split())
    model = common.Unigram(vocab.frequencies())
    batches = common.eval_batches(common.fixed_eval_set(vocab.encode("a b a a b a a a b a".split() * 7), seq_len=10))
    metrics = common.masked_metrics(model, batches)
    targets = torch.cat([t for _, t in batches])
    p = {vocab.stoi["a"]: 0.75, vocab.stoi["b"]: 0.25}
    assert metrics["cross_entropy"] == pytest.approx(-sum(math.log(p[t]) for t in targets.tolist()) / len(targets))
    assert metrics["top1"] == pytest.approx((targets == vocab.stoi["a"]).float().mean().item())


VOCAB = common.Vocab([f"w{i}" for i in range(998)] * 2 + ["w0"])  # 1000 entries with the two specials


def model_params(**changes):
    return parameter_count(common.make_model(common.BASELINE | changes, VOCAB))


def test_model_returns_logits_of_the_predicted_positions_only():
    model = common.make_model(common.BASELINE, VOCAB).eval()
    ids = torch.randint(0, 1000, (3, 35))
    predict = torch.zeros(3, 35, dtype=torch.bool)
    predict[0, 3] = predict[2, 7] = True
    assert model(common.pack(ids, predict)).shape == (2, 1000)
    everything = model(common.pack(ids, torch.ones_like(predict))).view(3, 35, 1000)
    assert torch.allclose(model(common.pack(ids, predict)), everything[predict], atol=1e-5)


def test_model_attends_in_both_directions():
    model = common.make_model(common.BASELINE, VOCAB).eval()
    ids = torch.randint(2, 100, (1, 10))
    predict = torch.zeros(1, 10, dtype=torch.bool)
    predict[0, 0] = True
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 2) % 98 + 2
    assert not torch.allclose(model(common.pack(ids, predict)), model(common.pack(changed, predict)))


def test_same_resource_changes_keep_the_parameter_budget():
    baseline = model_params()
    for label, change in common.CHANGES.items():
        params = model_params(**change)
        assert params <= baseline + 2 * 200, label  # pre-LayerNorm adds one final LayerNorm (400 weights)
    assert model_params(tied=True) == baseline - 200 * 1000
    assert model_params(**common.ALL_CHANGES) <= baseline


def test_unigram_bias_starts_the_decoder_at_log_frequencies():
    model = common.make_model(common.BASELINE | {"unigram_bias": True}, VOCAB)
    expected = ((VOCAB.frequencies() + 1) / (VOCAB.frequencies() + 1).sum()).log()
    assert torch.allclose(model.decoder.bias, expected)
    assert VOCAB.frequencies()[2] == 3 and torch.all(common.make_model(common.BASELINE, VOCAB).decoder.bias == 0)


def test_ablation_reverts_exactly_one_change_at_a_time():
    configs = common.ablation_configs()
    same = configs.pop("all changes")
    for (label, change), config in zip(common.CHANGES.items(), configs.values()):
        differing = {k for k in common.BASELINE if config[k] != same[k]}
        assert differing == set(change), label


def test_fill_mask_ranks_words_for_each_mask():
    vocab = common.Vocab("the cat sat on the mat".split())
    torch.manual_seed(0)
    model = common.make_model(common.BASELINE | {"d_model": 16, "d_hid": 16}, vocab)
    filled = common.fill_mask(model, vocab, "The [MASK] sat on the [mask] !", k=3)
    assert len(filled) == 2
    for candidates in filled:
        words, probs = zip(*candidates)
        assert len(words) == 3 and not {common.UNK, common.MASK} & set(words)
        assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    with pytest.raises(ValueError):
        common.fill_mask(model, vocab, "no blank here")


def test_checkpoint_round_trips_in_half_precision_without_duplicating_tied_weights(tmp_path):
    config = common.BASELINE | common.ALL_CHANGES
    model = common.make_model(config, VOCAB).eval()
    common.save_checkpoint(model, config, tmp_path / "model.pt")
    loaded = common.load_checkpoint(tmp_path / "model.pt", VOCAB).eval()
    x = common.pack(torch.randint(2, 1000, (2, 35)), torch.rand(2, 35) < 0.2)
    assert torch.allclose(model(x), loaded(x), atol=0.05)
    assert model.embedding.weight.dtype == torch.float32  # saving leaves the model itself in float32
    assert (tmp_path / "model.pt").stat().st_size < 2.2 * model_params(**common.ALL_CHANGES)


def test_sentence_ids_split_punctuation_and_map_unknown_words():
    vocab = common.Vocab("the cat , .".split())
    ids = common.sentence_ids("The cat, [MASK] zebra.", vocab)
    assert ids.tolist() == [vocab.stoi["the"], vocab.stoi["cat"], vocab.stoi[","], common.MASK_ID, common.UNK_ID,
                            vocab.stoi["."]]


def test_unrestricted_runs_are_the_lstm_recipe_at_two_lengths():
    configs = common.unrestricted_configs()
    assert [c["epochs"] for c in configs.values()] == [4, 8]
    for config in configs.values():
        shipped = common.hyperparameters(common.BASELINE | common.RECIPE)
        assert config["arch"] == "lstm" and common.hyperparameters(config) == shipped
    assert all((c["epochs"], c["limit"]) == (1, 20_000) for c in common.unrestricted_configs(smoke=True).values())


def test_seed_configs_change_only_the_seed_and_name_the_run_after_it():
    config = common.make_config("same")
    reseeded = common.seed_configs(config)
    assert [(c["seed"], c["name"]) for c in reseeded] == [(1, "same_seed1"), (2, "same_seed2")]
    assert all({k for k in config if c[k] != config[k]} == {"seed", "name"} for c in reseeded)


LSTM = common.BASELINE | common.RECIPE | {"d_model": 16, "d_hid": 12, "dropout": 0.0}


def test_cloze_lstm_predicts_each_position_from_both_sides_but_never_from_its_own_input():
    torch.manual_seed(0)
    model = common.make_model(LSTM, VOCAB).eval()
    ids = torch.randint(2, 1000, (1, 12))
    predict = torch.zeros(1, 12, dtype=torch.bool)
    predict[0, 5] = True

    def logits_with(position, word):
        changed = ids.clone()
        changed[0, position] = word
        return model(common.pack(changed, predict))

    same = model(common.pack(ids, predict))
    assert torch.equal(logits_with(5, 7), same)  # its own input is never read
    assert not torch.allclose(logits_with(0, 7), same) and not torch.allclose(logits_with(11, 7), same)
    everything = model(common.pack(ids, torch.ones_like(predict)))
    assert torch.allclose(everything[5], same[0], atol=1e-6)


def test_lstm_checkpoint_round_trips_without_a_positional_table(tmp_path):
    model = common.make_model(LSTM, VOCAB).eval()
    common.save_checkpoint(model, LSTM, tmp_path / "lstm.pt")
    loaded = common.load_checkpoint(tmp_path / "lstm.pt", VOCAB).eval()
    x = common.pack(torch.randint(2, 1000, (2, 35)), torch.rand(2, 35) < 0.2)
    assert isinstance(loaded, common.ClozeLSTM) and torch.allclose(model(x), loaded(x), atol=0.02)


def test_lstm_flops_are_counted_as_their_two_matrix_products_per_pass():
    from torch.utils.flop_counter import FlopCounterMode

    lstm, x = torch.nn.LSTM(8, 6, batch_first=True), torch.randn(3, 5, 8)
    with FlopCounterMode(display=False, custom_mapping=common.LSTM_FLOPS) as counter:
        lstm(x)[0].sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 15 * 4 * 6 * (8 + 6)  # forward + twice that backward
    lstm_config = common.make_config("lstm", **common.RECIPE)
    assert common.training_flops_per_token(lstm_config, VOCAB) > 3 * 2 * 2 * 4 * 256 * 512  # both directions


def test_training_cost_is_measured_per_token_and_grows_with_the_model():
    small = common.make_config("small", **{"d_model": 16, "d_hid": 16})
    flops = common.training_flops_per_token(small, VOCAB)
    assert flops > 3 * 2 * 16 * 1000  # at least the decoder's forward and backward at every position
    assert common.training_flops_per_token(common.BASELINE, VOCAB) > 5 * flops
    assert 0 < common.training_seconds_per_token(small, VOCAB, steps=2) < 0.05  # per token, not per step


# ---------------------------------------------------------------- count models
COUNT_IDS = torch.tensor([2, 3, 4, 2, 3, 5, 2, 4, 4, 0, 3, 2, 3, 4, 5, 5, 2])  # <unk> (0) and words 2-5
COUNT_VOCAB = 6


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_gives_a_distribution_over_the_words_for_any_history(order):
    model = common.KneserNey(COUNT_IDS, COUNT_VOCAB, order)
    histories = np.array([[2, 3], [5, 5], [-1, 4], [-1, -1], [3, -1], [0, 1]])[:, 2 - (order - 1):]
    probs = model.next_word_probs(histories)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert (probs[:, common.MASK_ID] == 0).all() and (probs[:, [0, 2, 3, 4, 5]] > 0).all()


def test_kneser_ney_bigram_matches_its_formula():
    model = common.KneserNey(COUNT_IDS, COUNT_VOCAB, 2)
    pairs = list(zip(COUNT_IDS[:-1].tolist(), COUNT_IDS[1:].tolist()))
    counts = {pair: pairs.count(pair) for pair in set(pairs)}
    n1, n2 = sum(c == 1 for c in counts.values()), sum(c == 2 for c in counts.values())
    d = n1 / (n1 + 2 * n2)
    followers = {w: len({a for a, b in counts if b == w}) for w in range(COUNT_VOCAB)}  # continuation counts
    continuation = np.array([followers[w] for w in range(COUNT_VOCAB)], dtype=float)
    d1 = model.levels[0][2]
    uniform = np.where(np.arange(COUNT_VOCAB) == common.MASK_ID, 0, 1 / (COUNT_VOCAB - 1))
    lower = np.maximum(continuation - d1, 0) / continuation.sum() + d1 * (continuation > 0).sum() / (
        continuation.sum()) * uniform
    context = 3
    total = sum(c for (a, _), c in counts.items() if a == context)
    types = sum(1 for a, _ in counts if a == context)
    expected = np.array([max(counts.get((context, w), 0) - d, 0) / total for w in range(COUNT_VOCAB)])
    expected += d * types / total * lower
    expected[common.MASK_ID] = 0
    np.testing.assert_allclose(model.next_word_probs(np.array([[context]]))[0], expected, rtol=1e-9)


def test_bigram_counts_from_both_sides_are_the_markov_sandwich():
    model = common.CountMLM(COUNT_IDS, COUNT_VOCAB, order=2, beta=1.0)
    ids = np.array([[3, common.MASK_ID, 4, 2]])
    log_probs = model.log_probs(ids, np.array([0]), np.array([1]))[0]
    forward = model.forward_model.next_word_probs(np.array([[3]]))[0]  # P(w | left = 3)
    after = model.forward_model.next_word_probs(np.arange(COUNT_VOCAB)[:, None])[:, 4]  # P(right = 4 | w)
    sandwich = forward * after
    sandwich[common.MASK_ID] = 0
    # the backward model estimates P(w | right) P(right) / P(w) by its own counts: the same up to smoothing
    np.testing.assert_allclose(np.exp(log_probs), sandwich / sandwich.sum(), atol=0.08)
    np.testing.assert_allclose(np.exp(log_probs).sum(), 1, rtol=1e-6)


def test_count_model_ignores_masked_neighbours_and_window_edges():
    model = common.CountMLM(COUNT_IDS, COUNT_VOCAB, order=3)
    ids = np.array([[common.MASK_ID, 3, common.MASK_ID, 4]])
    np.testing.assert_array_equal(model.histories(ids, np.array([0]), np.array([2]), -1), [[-1, 3]])
    np.testing.assert_array_equal(model.histories(ids, np.array([0]), np.array([2]), +1), [[-1, 4]])
    np.testing.assert_array_equal(model.histories(ids, np.array([0]), np.array([0]), -1), [[-1, -1]])


def test_mixture_of_one_network_without_counts_is_its_own_score():
    torch.manual_seed(0)
    network = common.make_model(common.BASELINE | {"d_model": 16, "d_hid": 16}, VOCAB).eval()
    batches = common.eval_batches(common.fixed_eval_set(torch.randint(2, 1000, (700,)), seq_len=35))
    alone = common.masked_metrics(network, batches)
    mixed = common.mixture_metrics([network], None, batches, [0.0])[0.0]
    assert mixed["cross_entropy"] == pytest.approx(alone["cross_entropy"], rel=1e-5)
    assert mixed["top1"] == alone["top1"] and mixed["positions"] == alone["positions"]
    twice = common.mixture_metrics([network, network], None, batches, [0.0])[0.0]
    assert twice["cross_entropy"] == pytest.approx(alone["cross_entropy"], rel=1e-5)


def test_mixture_interpolates_network_and_count_probabilities():
    torch.manual_seed(0)
    vocab = common.Vocab([f"w{i}" for i in range(20)] * 3)
    stream = torch.randint(2, len(vocab), (700,))
    network = common.make_model(common.BASELINE | {"d_model": 16, "d_hid": 16}, vocab).eval()
    counts = common.CountMLM(stream, len(vocab), order=2)
    batches = common.eval_batches(common.fixed_eval_set(stream, seq_len=35))
    mixed = common.mixture_metrics([network], counts, batches, [0.0, 0.5, 1.0])
    assert mixed[1.0]["cross_entropy"] == pytest.approx(common.masked_metrics(counts, batches)["cross_entropy"],
                                                         rel=1e-5)
    inputs, targets = batches[0]
    half = (0.5 * network(inputs).softmax(-1) + 0.5 * counts(inputs).exp()).gather(1, targets[:, None]).log()
    one_batch = common.mixture_metrics([network], counts, batches[:1], [0.5])[0.5]
    assert one_batch["cross_entropy"] == pytest.approx(-half.mean().item(), rel=1e-5)


# ---------------------------------------------------------------- the committed predictor

@pytest.fixture(scope="module")
def predictor():
    return common.load_predictor()  # mlm/checkpoints: predictor.json, vocab.json, mlm_best.pt


def test_fill_mask_scores_a_long_text_window_by_window():
    vocab = common.Vocab("the cat sat on the mat".split())
    torch.manual_seed(0)
    model = common.make_model(common.BASELINE | {"d_model": 16, "d_hid": 16, "dropout": 0.0}, vocab)
    words = ("the cat sat on the mat " * 20).split()  # 120 tokens: windows 0-34, 35-69, 70-104, 105-119
    for i in (3, 40, 110):
        words[i] = "[MASK]"
    filled = common.fill_mask(model, vocab, " ".join(words), k=3, window=35)
    alone = [common.fill_mask(model, vocab, " ".join(words[start:start + 35]), k=3, window=35)[0]
             for start in (0, 35, 105)]
    assert len(filled) == 3
    for got, expected in zip(filled, alone):
        assert [w for w, _ in got] == [w for w, _ in expected]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-5)


def test_vocab_from_words_keeps_the_order_and_refuses_a_list_without_the_specials():
    vocab = common.Vocab.from_words([common.UNK, common.MASK, "the", "cat"])
    assert vocab.stoi["cat"] == 3 and len(vocab) == 4
    assert common.sentence_ids("The dog [MASK]", vocab).tolist() == [2, common.UNK_ID, common.MASK_ID]
    for words in (["the", "cat"], [common.UNK, common.MASK, "the", "the"]):
        with pytest.raises(ValueError):
            common.Vocab.from_words(words)


def test_predictor_gives_one_row_per_mask_and_an_error_row_per_unusable_sentence(predictor):
    inputs = common.demo_inputs()
    table = predictor.predict(inputs)
    assert list(table.columns) == ["sentence", "mask", "position", "context", "prediction", "probability", "top 5",
                                   "warning", "error"]
    assert table["sentence"].tolist() == [0, 1, 2, 3, 4, 5, 5, 6]
    good = table[table["error"] == ""]
    assert len(good) == 6 and good["prediction"].str.len().gt(0).all()
    assert (good["warning"] != "").tolist() == [False] * 5 + [True]
    assert good["probability"].between(0, 1).all()
    for top in good["top 5"]:
        probabilities = [float(p) for p in re.findall(r"(?:^|, )\S+ (\d\.\d{3})", top)]  # a word may be ","
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert "empty" in table.loc[3, "error"] and "no [MASK]" in table.loc[4, "error"]
    long = table[table["sentence"] == 5]
    assert long["position"].tolist() == [40, 5_950] and long["mask"].tolist() == [1, 2]
    assert len(common.sentence_tokens(inputs[5])) > 5_000  # beyond the tutorial's table of positions
    assert "[MASK]" in long["context"].iloc[1]


def test_predictor_scores_each_mask_of_a_long_text_from_its_own_window(predictor):
    words = common.long_text().split()
    table = predictor.predict(" ".join(words))
    window = predictor.manifest["input"]["window"]
    for position, (_, row) in zip((40, 5_950), table.iterrows()):
        start = position // window * window
        alone = predictor.predict(" ".join(words[start:start + window]))
        assert alone["top 5"].tolist() == [row["top 5"]]


def test_predictor_accepts_one_string_and_survives_a_batch_without_any_usable_sentence(predictor):
    one = predictor.predict("the [MASK] of the united states")
    assert len(one) == 1 and one["error"].tolist() == [""] and one["position"].tolist() == [1]
    bad = predictor.predict(["", "   ", "no blank at all .", None, 3])
    assert len(bad) == 5 and bad["error"].str.len().gt(0).all() and (bad["prediction"] == "").all()
    assert bad["probability"].isna().all() and bad["mask"].isna().all()
    assert "expected a text" in bad["error"].iloc[3]
    assert predictor.predict([]).empty


def test_predictor_manifest_describes_the_committed_model(predictor):
    manifest = predictor.manifest
    assert manifest["vocabulary"]["words"] == len(predictor.vocab) == predictor.model.embedding.num_embeddings
    assert manifest["input"]["window"] == manifest["source"]["recipe"]["bptt"] == common.EVAL_SEQ_LEN
    assert manifest["model"]["config"] == common.model_config(manifest["source"]["recipe"])
    assert repr(predictor).startswith("mlm masked-word predictor")


def test_missing_predictor_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json is missing"):
        common.load_predictor(tmp_path)
    with pytest.raises(FileNotFoundError, match="mlm_best.pt is missing: the notebook's checkpoint cell"):
        common.export_predictor(tmp_path)
    manifest = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    (tmp_path / "predictor.json").write_text(json.dumps(manifest | {"weights": {"file": "elsewhere.pt"}}))
    with pytest.raises(FileNotFoundError, match="elsewhere.pt is missing"):
        common.load_predictor(tmp_path)


def test_export_then_load_a_predictor_from_its_folder_alone(tmp_path, monkeypatch):
    vocab = common.Vocab("the cat sat on the mat . a dog ran".split())
    config = common.make_config("tiny", **{"d_model": 16, "d_hid": 16, "limit": 100})
    model = common.make_model(config, vocab)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    common.save_checkpoint(model, config, folder / common.WEIGHTS)
    monkeypatch.setattr(common, "load_corpus", lambda protocol, limit: common.Corpus(vocab, *[torch.zeros(1)] * 3))
    common.export_predictor(folder, smoke=True)
    monkeypatch.setattr(common, "load_corpus", None)  # loading needs no data
    loaded = common.load_predictor(folder)
    assert loaded.vocab.itos == vocab.itos and loaded.manifest["smoke"] is True
    table = loaded.predict(["the [MASK] sat", "a [MASK] ran [MASK]"])
    assert table["sentence"].tolist() == [0, 1, 1] and (table["error"] == "").all()
    assert "first 100 tokens" in loaded.manifest["vocabulary"]["source"]


def _trained(perplexity, seed=0):
    return {"test": {"perplexity": perplexity, "top1": 1 / perplexity}, "params": 10, "tokens_seen": 100,
            "train_seconds": 60.0, "config": {"seed": seed}}


def test_summarize_collects_every_model_and_the_headline():
    results = common.summarize(
        protocol="offline", profile="full", unigram={"test": {"perplexity": 750.0, "top1": 0.07}},
        count={"test": {"perplexity": 230.0, "top1": 0.22}}, count_label="4-gram counts",
        tutorial_seeds=[_trained(970.0), _trained(980.0, 1)], same_label="masked loss",
        same_seeds=[_trained(600.0), _trained(610.0, 1)], flops_ratio=1.0, time_ratio=0.9, lstm_label="BiLSTM",
        lstm_seeds=[_trained(150.0), _trained(151.0, 1), _trained(152.0, 2)], lstm_flops_ratio=3.0,
        final={"test": {"perplexity": 120.0, "top1": 0.27}, "ensemble_test": {"perplexity": 130.0},
               "count_weight": 0.2},
        ablation={"all changes": _trained(650.0)}, unrestricted={"BiLSTM": _trained(150.0)})
    assert (results["final_ppl"], results["neural_best_ppl"], results["count_baseline_ppl"]) == (120.0, 150.0, 230.0)
    assert results["final_model"] == "ensemble of 3 BiLSTM seeds + 4-gram counts, λ = 0.2"
    assert results["baseline_ppl_by_seed"] == [970.0, 980.0] and results["trained_runs"] == 7
    assert results["train_minutes_all_runs"] == pytest.approx(7.0)
    assert results["headline"]["test ppl"] == ("120 final (LSTM ensemble + counts), 150 LSTM alone, 230 count "
                                               "baseline, 600 same cost, 970 tutorial MLM")
    assert "train: valid file minus 10% articles" in results["data"]
