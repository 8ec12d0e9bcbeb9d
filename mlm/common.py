"""Masked language modelling on WikiText-2, starting from PyTorch's "Language Modeling with nn.Transformer" tutorial.

The tutorial's model and recipe (kept by the baseline): word-level tokens, embedding 200 scaled by sqrt(200),
sinusoidal positions, 2 post-LayerNorm encoder layers (2 heads, feed-forward 200, dropout 0.2), an untied linear
decoder; SGD lr 5.0, StepLR(1, gamma 0.95) per epoch, gradient norm clipped to 0.5, 20 batchified columns cut
into windows of 35 tokens, served in order. Converting it to masked prediction removes the causal attention mask
and replaces 10% of the input words by `<mask>`; the model predicts the original word.

A batch's input is one tensor (batch, 2, time): row 0 the (corrupted) token ids, row 1 which positions to
predict. The model returns logits only for those positions, row-major, so `mlkit.train.fit` sees a plain
classification problem: logits (M, vocab) against targets (M,).
"""
import copy
import functools
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import sparse
from scipy.sparse.linalg import svds
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mlkit.datasets import prepare
from mlkit.experiments import run_dir as run_folder
from mlkit.predictors import named_files, read_manifest, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import fit, load_state, parameter_count, warmup_cosine

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
WEIGHTS = "mlm_best.pt"  # the best model, saved by the notebook's checkpoint cell (`save_checkpoint`)
VOCAB_FILE = "vocab.json"  # its vocabulary, `Vocab.itos` as a JSON list, written by `export_predictor`
UNK, MASK = "<unk>", "<mask>"
UNK_ID, MASK_ID = 0, 1  # every vocabulary starts with these two
MASK_RATE = 0.1
EVAL_SEQ_LEN = 35  # the tutorial's bptt: every model is scored on the same 35-token windows
EVAL_SEED = 1234
DEV_PASSES = 10  # the dev split is small: it is scored under 10 disjoint masks, so every position counts once
RECIPE = {  # the shipped model, on top of BASELINE (the tutorial's protocol: windows of 35 tokens, seed 0)
    "arch": "lstm",  # a bidirectional cloze LSTM: predicts each word from the words on both sides, never its own
    "d_model": 256, "d_hid": 256, "nlayers": 1,  # embedding and hidden size; one layer each way
    "dropout": 0.4,  # not tuned
    "tied": True,  # input and output embeddings shared: fewer parameters
    "unigram_bias": True,  # the output bias starts at the log unigram frequencies: training starts at the unigram
    "loss_on": "all",  # every position is a target (the model never sees its own input word)
    "dynamic": True, "mask_rate": 0.15,  # a fresh 15% of the inputs masked each epoch teaches reading around blanks
    "batch_size": 32, "clip": 1.0,
    "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "warmup": 0.05,  # warm-up 5% of steps, cosine decay
    "epochs": 8,  # 8 rather than 4: chosen on dev (`LSTM_CHOICES`); the epoch with the lowest dev loss is kept
}
SHIPPED_RUN = "cloze_bilstm_256_8_epochs"
PROTOCOLS = {  # name -> files for train, model selection, test (None: the held-out 10% of the training articles)
    "offline": ("wiki.valid.tokens", None, "wiki.test.tokens"),
    "official": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
}


# ---------------------------------------------------------------- data
def is_title(line: str) -> bool:
    """` = Title = ` starts an article; ` = = Section = = ` does not."""
    return re.fullmatch(r" = (?!=).*(?<!=) = ", line) is not None


def tokenize(line: str) -> list[str]:
    """WikiText is already tokenized; like the tutorial's basic_english tokenizer, lowercase it."""
    return line.lower().split()


def read_articles(path: Path) -> list[list[str]]:
    """The tokens of every article in a WikiText file (its title line and sections included)."""
    articles = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if is_title(line):
            articles.append([])
        if articles:
            articles[-1] += tokenize(line)
    return articles


def hold_out(articles: list, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Split whole articles, not tokens, so no article is on both sides."""
    order = torch.randperm(len(articles), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, round(fraction * len(articles)))
    return [articles[i] for i in order[n_held:]], [articles[i] for i in order[:n_held]]


class Vocab:
    """`<unk>` and `<mask>` first, then the training words by decreasing frequency; unknown words map to `<unk>`."""

    def __init__(self, tokens: list[str]):
        self.counts = Counter(tokens)
        words = sorted(self.counts.keys() - {UNK, MASK}, key=lambda w: (-self.counts[w], w))
        self.itos = [UNK, MASK, *words]
        self.stoi = {word: i for i, word in enumerate(self.itos)}

    @classmethod
    def from_words(cls, itos: list[str]) -> "Vocab":
        """The vocabulary of an exported word list (`itos` order; no counts: every frequency is 0)."""
        if list(itos[:2]) != [UNK, MASK] or len(set(itos)) != len(itos):
            raise ValueError(f"a vocabulary starts with {UNK!r}, {MASK!r} and lists every word once")
        vocab = cls([])
        vocab.itos = list(itos)
        vocab.stoi = {word: i for i, word in enumerate(vocab.itos)}
        return vocab

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> torch.Tensor:
        return torch.tensor([self.stoi.get(t, UNK_ID) for t in tokens], dtype=torch.long)

    def frequencies(self) -> torch.Tensor:
        return torch.tensor([self.counts[w] for w in self.itos], dtype=torch.float)


@dataclass
class Corpus:
    vocab: Vocab
    train: torch.Tensor  # token ids, one stream each
    dev: torch.Tensor
    test: torch.Tensor


@functools.lru_cache(maxsize=4)
def load_corpus(protocol: str = "offline", limit: int | None = None) -> Corpus:
    """The three splits of `protocol` as id streams; `limit` keeps each split's first tokens (smoke runs)."""
    root = prepare("wikitext2")
    train_file, dev_file, test_file = PROTOCOLS[protocol]
    train = read_articles(root / train_file)
    train, dev = hold_out(train) if dev_file is None else (train, read_articles(root / dev_file))
    train, dev, test = ([t for article in split for t in article][:limit]
                        for split in (train, dev, read_articles(root / test_file)))
    vocab = Vocab(train)
    return Corpus(vocab, vocab.encode(train), vocab.encode(dev), vocab.encode(test))


def batchify(ids: torch.Tensor, columns: int) -> torch.Tensor:
    """(columns, length): the stream cut into `columns` contiguous rows, as the tutorial does (transposed)."""
    length = len(ids) // columns
    return ids[: columns * length].view(columns, length)


# ---------------------------------------------------------------- masking
def choose_masked(shape, rate: float = MASK_RATE, generator=None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) < rate


def corrupt(ids: torch.Tensor, masked: torch.Tensor, vocab_size: int, bert: bool, generator=None) -> torch.Tensor:
    """Replace the masked positions by `<mask>`; with `bert`, 80% `<mask>`, 10% a random word, 10% unchanged."""
    corrupted = ids.clone()
    if not bert:
        corrupted[masked] = MASK_ID
        return corrupted
    draw = torch.rand(ids.shape, generator=generator)
    random_words = torch.randint(2, vocab_size, ids.shape, generator=generator)
    corrupted[masked & (draw < 0.8)] = MASK_ID
    swap = masked & (draw >= 0.8) & (draw < 0.9)
    corrupted[swap] = random_words[swap]
    return corrupted


def pack(corrupted: torch.Tensor, predict: torch.Tensor) -> torch.Tensor:
    """The model's input: (batch, 2, time) of token ids and the positions to predict."""
    return torch.stack([corrupted, predict.long()], 1)


def fixed_eval_set(ids: torch.Tensor, seq_len: int = EVAL_SEQ_LEN, seed: int = EVAL_SEED, passes: int = 1) -> tuple:
    """The seeded masked positions every model is scored on: (inputs, original windows).

    The stream is cut into windows of `seq_len`; exactly 10% of the positions are replaced by `<mask>`;
    masked `<unk>` targets stay masked in the input but are not scored. With `passes` > 1 (at most 10), every
    window appears `passes` times, each time under a different, disjoint 10% of masked positions.
    """
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    chosen = torch.randperm(windows.numel(), generator=torch.Generator().manual_seed(seed))
    per_pass = round(MASK_RATE * windows.numel())
    if passes * per_pass > windows.numel():
        raise ValueError(f"{passes} disjoint masks of {MASK_RATE:.0%} do not fit in one window set")
    masked = torch.zeros(passes, windows.numel(), dtype=torch.bool)
    for i in range(passes):
        masked[i, chosen[i * per_pass: (i + 1) * per_pass]] = True
    masked, windows = masked.view(-1, seq_len), windows.repeat(passes, 1)
    return pack(corrupt(windows, masked, 0, bert=False), masked & (windows != UNK_ID)), windows


def split_eval_set(corpus: Corpus, split: str) -> tuple:
    """The fixed evaluation set of "dev" (`DEV_PASSES` masks) or "test" (one 10% mask)."""
    return fixed_eval_set(getattr(corpus, split), passes=DEV_PASSES if split == "dev" else 1)


def eval_batches(eval_set: tuple, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) batches of windows; the targets are the original words at the scored positions."""
    inputs, windows = eval_set
    return [(inputs[i: i + batch_size], windows[i: i + batch_size][inputs[i: i + batch_size, 1].bool()])
            for i in range(0, len(inputs), batch_size)]


class MaskedBatches:
    """Training windows of `bptt` tokens from `columns` batchified rows, in order, a share `rate` of the words masked.

    static: the masks are drawn once (from `seed`) and reused every epoch; dynamic: drawn afresh every epoch.
    loss_on "all": predict every position (the plainest conversion of the tutorial); "masked": only the masked ones.
    """

    def __init__(self, ids, columns=20, bptt=35, dynamic=False, bert=False, loss_on="all", vocab_size=None, seed=0,
                 rate=MASK_RATE):
        self.rows, self.bptt, self.bert, self.loss_on, self.rate = batchify(ids, columns), bptt, bert, loss_on, rate
        self.vocab_size = vocab_size or int(ids.max()) + 1
        self.static = None if dynamic else self._corrupt(torch.Generator().manual_seed(seed))

    def _corrupt(self, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        masked = choose_masked(self.rows.shape, self.rate, generator)
        return corrupt(self.rows, masked, self.vocab_size, self.bert, generator), masked

    def __len__(self) -> int:
        return math.ceil(self.rows.shape[1] / self.bptt)

    def __iter__(self):
        corrupted, masked = self.static or self._corrupt()
        predict = masked if self.loss_on == "masked" else torch.ones_like(masked)
        for start in range(0, self.rows.shape[1], self.bptt):
            window = slice(start, start + self.bptt)
            yield pack(corrupted[:, window], predict[:, window]), self.rows[:, window][predict[:, window]]

    def tokens_per_epoch(self) -> int:
        return self.rows.numel()


# ---------------------------------------------------------------- word vectors
def ppmi_vectors(ids: torch.Tensor, vocab_size: int, dim: int, window: int = 2) -> torch.Tensor:
    """(vocab_size, dim) word vectors from the training stream alone: truncated SVD of the positive pointwise
    mutual information of co-occurrence counts within `window` words on each side (Levy & Goldberg 2014), U·√S.
    Words that never occur get zero vectors."""
    ids = ids.numpy()
    left = np.concatenate([ids[:-d] for d in range(1, window + 1)])
    right = np.concatenate([ids[d:] for d in range(1, window + 1)])
    counts = sparse.coo_matrix((np.ones(2 * len(left)), (np.r_[left, right], np.r_[right, left])),
                               shape=(vocab_size, vocab_size)).tocsr().tocoo()  # tocsr sums duplicates
    row_sums, col_sums = np.asarray(counts.sum(1)).ravel(), np.asarray(counts.sum(0)).ravel()
    pmi = np.log(counts.data * counts.sum() / (row_sums[counts.row] * col_sums[counts.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=(vocab_size, vocab_size))
    u, s, _ = svds(ppmi, k=dim, random_state=0)
    return torch.tensor(u * np.sqrt(s), dtype=torch.float)


@functools.lru_cache(maxsize=4)
def ppmi_embedding(protocol: str, limit: int | None, dim: int) -> torch.Tensor:
    """`ppmi_vectors` of the training split, scaled to the spread of the default uniform(-0.1, 0.1) init."""
    corpus = load_corpus(protocol, limit)
    vectors = ppmi_vectors(corpus.train, len(corpus.vocab), dim)
    return vectors * (0.1 / math.sqrt(3) / vectors.std())


# ---------------------------------------------------------------- models
class PositionalEncoding(nn.Module):
    """The tutorial's sinusoidal positions (batch-first), followed by dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return self.dropout(x + self.pe[: x.shape[1]])


def init_word_layers(embedding: nn.Embedding, decoder: nn.Linear, tied: bool, output_bias: torch.Tensor | None):
    """The tutorial's init: word vectors uniform in +-0.1, the decoder's bias at 0 (or at `output_bias`); `tied`
    shares the embedding with the decoder, otherwise the decoder's weight gets the same init."""
    nn.init.uniform_(embedding.weight, -0.1, 0.1)
    nn.init.zeros_(decoder.bias)
    if output_bias is not None:
        decoder.bias.data.copy_(output_bias)
    if tied:
        decoder.weight = embedding.weight
    else:
        nn.init.uniform_(decoder.weight, -0.1, 0.1)


class MaskedLM(nn.Module):
    """The tutorial's TransformerModel without its causal mask; `tied` shares the embedding with the decoder,
    `pre_norm` puts LayerNorm before each sublayer (plus one at the end), `output_bias` starts the decoder's bias
    there instead of at 0."""

    def __init__(self, vocab_size: int, d_model=200, nhead=2, d_hid=200, nlayers=2, dropout=0.2, tied=False,
                 pre_norm=False, output_bias: torch.Tensor | None = None):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True, norm_first=pre_norm)
        self.encoder = nn.TransformerEncoder(layer, nlayers, norm=nn.LayerNorm(d_model) if pre_norm else None,
                                             enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, vocab_size)
        init_word_layers(self.embedding, self.decoder, tied, output_bias)

    def forward(self, x):
        """x: (batch, 2, time) token ids and positions to predict -> logits of those positions (M, vocab)."""
        ids, predict = x[:, 0], x[:, 1].bool()
        hidden = self.encoder(self.pos_encoder(self.embedding(ids) * math.sqrt(self.d_model)))
        return self.decoder(hidden[predict])


class ClozeLSTM(nn.Module):
    """A bidirectional LSTM for masked words: position t is predicted from a forward LSTM that has read the words
    before t and a backward LSTM that has read the words after it. A position's own input is never seen, so every
    position of a training window is a target, masked or not; the masked inputs teach it to read around blanks.
    `tied` shares the embedding with the decoder."""

    def __init__(self, vocab_size: int, d_model=400, d_hid=400, nlayers=2, dropout=0.4, tied=True,
                 output_bias: torch.Tensor | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        lstm_dropout = dropout if nlayers > 1 else 0.0
        self.forward_lstm = nn.LSTM(d_model, d_hid, nlayers, batch_first=True, dropout=lstm_dropout)
        self.backward_lstm = nn.LSTM(d_model, d_hid, nlayers, batch_first=True, dropout=lstm_dropout)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(2 * d_hid, d_model)
        self.decoder = nn.Linear(d_model, vocab_size)
        init_word_layers(self.embedding, self.decoder, tied, output_bias)

    def forward(self, x):
        """x: (batch, 2, time) token ids and positions to predict -> logits of those positions (M, vocab)."""
        ids, predict = x[:, 0], x[:, 1].bool()
        embedded = self.dropout(self.embedding(ids))
        before, _ = self.forward_lstm(embedded)
        after, _ = self.backward_lstm(embedded.flip(1))
        edge = before.new_zeros(before[:, :1].shape)  # nothing read yet at a window's edges
        context = torch.cat([torch.cat([edge, before[:, :-1]], 1), torch.cat([after.flip(1)[:, 1:], edge], 1)], -1)
        hidden = torch.tanh(self.project(self.dropout(context[predict])))
        return self.decoder(self.dropout(hidden))


class Unigram(nn.Module):
    """Predicts every masked word from its training frequency alone."""

    def __init__(self, frequencies: torch.Tensor):
        super().__init__()
        self.register_buffer("log_probs", (frequencies / frequencies.sum()).log())

    def forward(self, x):
        return self.log_probs.expand(int(x[:, 1].sum()), -1)


# ---------------------------------------------------------------- count models
class KneserNey:
    """Interpolated Kneser-Ney model of the next word given up to `order - 1` previous words of a token stream.

    The highest order uses raw counts, lower orders continuation counts (in how many contexts a word follows),
    each level discounted by D = n1 / (n1 + 2 n2) (Ney's estimate); the lowest level is interpolated with the
    uniform distribution, so every word of the vocabulary but `<mask>` gets a probability.
    """

    def __init__(self, ids: torch.Tensor, vocab_size: int, order: int):
        self.vocab_size, self.order = vocab_size, order
        ids = ids.numpy().astype(np.int64)
        self.levels = []  # levels[k]: contexts of k words -> (sorted context keys, counts matrix, discount)
        grams = self._grams(ids, order)
        for k in range(order - 1, -1, -1):
            if k < order - 1:  # continuation counts: the distinct words before each (k+1)-gram
                grams = np.unique(grams, axis=0)[:, 1:]
            self.levels.insert(0, self._level(grams))
        unigram = np.bincount(ids, minlength=vocab_size).astype(np.float64)
        unigram[MASK_ID] = 0
        self.unigram = unigram / unigram.sum()
        self.uniform = np.full(vocab_size, 1 / (vocab_size - 1))
        self.uniform[MASK_ID] = 0

    @staticmethod
    def _grams(ids: np.ndarray, n: int) -> np.ndarray:
        return np.stack([ids[i: len(ids) - n + 1 + i] for i in range(n)], 1)

    def _key(self, contexts: np.ndarray) -> np.ndarray:
        key = np.zeros(len(contexts), dtype=np.int64)
        for column in contexts.T:
            key = key * self.vocab_size + column
        return key

    def _level(self, grams: np.ndarray) -> tuple:
        keys, rows = np.unique(self._key(grams[:, :-1]), return_inverse=True)
        counts = sparse.csr_matrix((np.ones(len(grams)), (rows.ravel(), grams[:, -1])),
                                   shape=(len(keys), self.vocab_size))
        counts.sum_duplicates()
        n1, n2 = (counts.data == 1).sum(), (counts.data == 2).sum()
        discount = n1 / max(n1 + 2 * n2, 1)
        return keys, counts, min(max(discount, 0.1), 0.9)  # bounded: a tiny corpus may have no words seen once

    def next_word_probs(self, histories: np.ndarray) -> np.ndarray:
        """(B, vocab) next-word probabilities; `histories` (B, order - 1) holds the previous words, the nearest
        last, -1 where a word is unknown (before a window's start or masked): the context stops there."""
        histories = np.asarray(histories, dtype=np.int64).reshape(len(histories), self.order - 1)
        known = np.flip(np.cumprod(np.flip(histories >= 0, 1), 1), 1).astype(bool)  # nearest words up to a gap
        lowest = self._interpolate(self.levels[0], np.zeros(1, dtype=np.int64), self.uniform)
        probs = np.tile(lowest, (len(histories), 1))
        for k in range(1, self.order):
            context = histories[:, self.order - 1 - k:]
            keys = self._key(np.where(context >= 0, context, 0))
            found = known[:, self.order - 1 - k] & np.isin(keys, self.levels[k][0])
            if found.any():
                probs[found] = self._interpolate(self.levels[k], keys[found], probs[found])
        if self.order > 1:
            probs[~known[:, -1]] = self.unigram  # no context at all: the plain training frequency
        probs[:, MASK_ID] = 0
        return probs

    @staticmethod
    def _interpolate(level: tuple, keys: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """max(c(h, w) - D, 0) / c(h) + D N1+(h) / c(h) x lower(w), for the contexts `keys` (all in the level)."""
        level_keys, counts, discount = level
        rows = counts[np.searchsorted(level_keys, keys)]
        totals = np.asarray(rows.sum(1)).ravel()
        backoff = discount * np.diff(rows.indptr) / totals
        rows.data = np.maximum(rows.data - discount, 0)
        return (sparse.diags(1 / totals) @ rows).toarray() + backoff[:, None] * lower


class CountMLM(nn.Module):
    """Masked-word prediction from n-gram counts in both directions: a forward Kneser-Ney model P(w | left words)
    and one trained on the reversed stream, P(w | right words), combined as a product of experts,

        log P(w | left, right) = log P_fwd(w | left) + log P_bwd(w | right) - beta log P(w) + const.

    For bigrams and beta = 1 this is exactly P(w | l, r) ∝ P(w | l) P(r | w), the "sandwich" of a first-order
    Markov chain. Only the visible words of the scored window count: a masked neighbour ends the context there.
    """

    def __init__(self, ids: torch.Tensor, vocab_size: int, order: int, beta: float = 1.0):
        super().__init__()
        self.forward_model = KneserNey(ids, vocab_size, order)
        self.backward_model = KneserNey(ids.flip(0), vocab_size, order)
        self.order, self.beta = order, beta

    def histories(self, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, step: int) -> np.ndarray:
        """The `order - 1` words before (step -1) or after (step +1) each position, nearest last; -1 outside the
        window or where the word is masked."""
        offsets = step * np.arange(self.order - 1, 0, -1)
        where = cols[:, None] + offsets[None, :]
        inside = (where >= 0) & (where < ids.shape[1])
        words = ids[rows[:, None], where.clip(0, ids.shape[1] - 1)]
        return np.where(inside & (words != MASK_ID), words, -1)

    def log_probs(self, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        left = self.forward_model.next_word_probs(self.histories(ids, rows, cols, -1))
        right = self.backward_model.next_word_probs(self.histories(ids, rows, cols, +1))
        unigram = self.forward_model.unigram
        scores = left * right * np.where(unigram > 0, unigram, 1) ** -self.beta  # <mask>: 0 already
        with np.errstate(divide="ignore"):
            return np.log(scores / scores.sum(1, keepdims=True))

    def forward(self, x):
        """x: (batch, 2, time) as for MaskedLM -> log-probabilities of the masked positions (M, vocab), row-major."""
        ids, predict = x[:, 0].numpy(), x[:, 1].bool().numpy()
        rows, cols = predict.nonzero()
        return torch.from_numpy(self.log_probs(ids, rows, cols)).float()


# ---------------------------------------------------------------- metrics
def top5_accuracy(logits, targets) -> float:
    return float((logits.topk(5, 1).indices == targets[:, None]).any(1).float().mean())


@torch.no_grad()
def masked_metrics(model: nn.Module, batches) -> dict:
    """Cross-entropy, perplexity = exp(cross-entropy), top-1 and top-5 accuracy over every scored position."""
    model.eval()
    total_ce, top1, top5, n = 0.0, 0, 0, 0
    for inputs, targets in batches:
        logits = model(inputs).float()
        total_ce += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), 1).indices
        top1 += (top[:, 0] == targets).sum().item()
        top5 += (top == targets[:, None]).any(1).sum().item()
        n += len(targets)
    ce = total_ce / n
    return {"cross_entropy": ce, "perplexity": math.exp(ce), "top1": top1 / n, "top5": top5 / n, "positions": n}


# ---------------------------------------------------------------- training
BASELINE = {  # the tutorial's model and recipe, converted to masked prediction
    "protocol": "offline", "limit": None, "seed": 0, "epochs": 3,
    "d_model": 200, "nhead": 2, "d_hid": 200, "nlayers": 2, "dropout": 0.2, "tied": False, "pre_norm": False,
    "batch_size": 20, "bptt": 35, "clip": 0.5, "optimizer": "sgd", "lr": 5.0, "weight_decay": 0.0, "warmup": 0.0,
    "loss_on": "all", "mask_rate": MASK_RATE, "bert": False, "dynamic": False, "unigram_bias": False,
    "ppmi_init": False,
}
MODEL_KEYS = {"transformer": ("d_model", "nhead", "d_hid", "nlayers", "dropout", "tied", "pre_norm"),
              "lstm": ("d_model", "d_hid", "nlayers", "dropout", "tied")}
ARCHITECTURES = {"transformer": MaskedLM, "lstm": ClozeLSTM}


def model_config(config: dict) -> dict:
    """The keys of `config` that shape its model: its architecture and that architecture's MODEL_KEYS."""
    arch = config.get("arch", "transformer")
    return {"arch": arch} | {key: config[key] for key in MODEL_KEYS[arch]}


def make_model(config: dict, vocab: Vocab) -> nn.Module:
    """`config["arch"]` (default "transformer", the tutorial's) with its MODEL_KEYS. `unigram_bias` starts the output
    bias at the log training frequencies: the untrained model is the unigram baseline, and training only has to learn
    what the context adds."""
    bias = unigram_log_probs(vocab.frequencies()) if config["unigram_bias"] else None
    shape = model_config(config)
    return ARCHITECTURES[shape.pop("arch")](len(vocab), **shape, output_bias=bias)


def unigram_log_probs(frequencies: torch.Tensor) -> torch.Tensor:
    """Add-one smoothed, so `<mask>` (never a target) gets a finite bias."""
    return ((frequencies + 1) / (frequencies + 1).sum()).log()


def make_optimizer(model: nn.Module, config: dict, steps_per_epoch: int) -> tuple:
    """The tutorial's SGD with StepLR per epoch, or AdamW with linear warmup and cosine decay per batch."""
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        return optimizer, {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.95)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], betas=(0.9, 0.98),
                                  weight_decay=config["weight_decay"])
    total = config["epochs"] * steps_per_epoch
    warmup = max(1, round(config["warmup"] * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
    return optimizer, {"scheduler": scheduler, "scheduler_per_batch": True}


def run(config: dict, run_dir: Path) -> dict:
    """Train one configuration (BASELINE's keys), keep the epoch with the best dev loss, score it on the test set."""
    seed_everything(config["seed"])
    corpus = load_corpus(config["protocol"], config["limit"])
    train = MaskedBatches(corpus.train, config["batch_size"], config["bptt"], config["dynamic"], config["bert"],
                          config["loss_on"], len(corpus.vocab), config["seed"], config["mask_rate"])
    model = make_model(config, corpus.vocab)
    if config["ppmi_init"]:
        model.embedding.weight.data.copy_(ppmi_embedding(config["protocol"], config["limit"], config["d_model"]))
    model = model.to(pick_device())
    optimizer, schedule = make_optimizer(model, config, len(train))
    history = fit(model, optimizer, F.cross_entropy, train, eval_batches(split_eval_set(corpus, "dev")),
                  config["epochs"], run_dir=run_dir, clip_grad_norm=config["clip"],
                  metrics={"top5": top5_accuracy}, progress=False, **schedule)
    model.load_state_dict(load_state(Path(run_dir) / "best.pt"))
    started = time.perf_counter()
    test = masked_metrics(model, eval_batches(split_eval_set(corpus, "test")))
    return {"config": config, "history": history, "test": test, "run_dir": str(run_dir),
            "params": parameter_count(model), "tokens_seen": config["epochs"] * train.tokens_per_epoch(),
            "train_seconds": sum(row["seconds"] for row in history), "test_seconds": time.perf_counter() - started}


COUNT_ORDERS = (2, 3, 4)
COUNT_BETAS = (0.9, 1.0, 1.1)


def count_run(config: dict, run_dir: Path) -> dict:
    """The count model of `config["order"]` (both directions), its beta chosen on dev among COUNT_BETAS, then
    scored once on test. Nothing is trained: counting the training split takes about a second."""
    started = time.perf_counter()
    corpus = load_corpus(config["protocol"], config["limit"])
    model = CountMLM(corpus.train, len(corpus.vocab), config["order"])
    dev = {}
    for beta in COUNT_BETAS:
        model.beta = beta
        dev[beta] = masked_metrics(model, eval_batches(split_eval_set(corpus, "dev")))
    model.beta = min(dev, key=lambda beta: dev[beta]["cross_entropy"])
    return {"config": config, "beta": model.beta, "dev": dev[model.beta], "dev_by_beta": list(dev.values()),
            "test": masked_metrics(model, eval_batches(split_eval_set(corpus, "test"))),
            "seconds": time.perf_counter() - started}


def count_config(order: int, smoke: bool = False, protocol: str = "offline") -> dict:
    return {"name": f"count_{order}gram", "order": order, "protocol": protocol, "limit": 20_000 if smoke else None}


MIX_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # the count model's share in the final system, chosen on dev


@torch.no_grad()
def mixture_metrics(networks: list[nn.Module], counts: CountMLM | None, batches, weights) -> dict[float, dict]:
    """For each weight w of `weights`: `masked_metrics` of (1 - w) x the mean of the networks' probabilities
    + w x the count model's. Every model scores each batch once."""
    sums = {weight: [0.0, 0] for weight in weights}  # summed cross-entropy, correct top-1
    n = 0
    for inputs, targets in batches:
        ensemble = torch.stack([network(inputs).float().softmax(-1) for network in networks]).mean(0)
        count_probs = counts(inputs).exp() if any(weights) else None
        for weight, total in sums.items():
            probs = (1 - weight) * ensemble + weight * count_probs if weight else ensemble
            total[0] -= probs.gather(1, targets[:, None]).clamp_min(1e-12).log().sum().item()
            total[1] += (probs.argmax(1) == targets).sum().item()
        n += len(targets)
    return {weight: {"cross_entropy": ce / n, "perplexity": math.exp(ce / n), "top1": top1 / n, "positions": n}
            for weight, (ce, top1) in sums.items()}


def combination_run(config: dict, run_dir: Path) -> dict:
    """The final system: the networks of `config["members"]` (trained runs beside `run_dir`) averaged, as an
    ensemble, then interpolated with the count model of `config["count"]`, its weight chosen on dev."""
    started = time.perf_counter()
    corpus = load_corpus(config["protocol"], config["limit"])
    networks = []
    for member in config["members"]:
        network = make_model(member, corpus.vocab)
        network.load_state_dict(load_state(run_folder(Path(run_dir).parent, member) / "best.pt"))
        networks.append(network.eval())
    counts = CountMLM(corpus.train, len(corpus.vocab), config["count"]["order"], config["count"]["beta"])
    dev = mixture_metrics(networks, counts, eval_batches(split_eval_set(corpus, "dev")), MIX_WEIGHTS)
    weight = min(dev, key=lambda w: dev[w]["cross_entropy"])
    test = mixture_metrics(networks, counts, eval_batches(split_eval_set(corpus, "test")), (0.0, weight))
    return {"config": config, "count_weight": weight, "dev": dev[weight], "dev_by_weight": list(dev.values()),
            "test": test[weight], "ensemble_dev": dev[0.0], "ensemble_test": test[0.0],
            "seconds": time.perf_counter() - started}


def random_batches(config: dict, vocab: Vocab, count: int) -> list:
    """`count` training batches of `config`'s shape and masking, drawn from random words (for cost measurements)."""
    ids = torch.randint(2, len(vocab), (config["batch_size"] * config["bptt"] * count + 1,))
    return list(MaskedBatches(ids, config["batch_size"], config["bptt"], loss_on=config["loss_on"],
                              vocab_size=len(vocab), rate=config["mask_rate"]))[:count]


def lstm_layer_flops(passes: int):
    """A FlopCounterMode formula for the CPU's fused LSTM layer, which has none: its two matrix products,
    2 x 4h x (inputs + h) per token, `passes` times (1 forward, 2 backward)."""
    def count(input_shape, input_weights, hidden_weights, *args, **kwargs) -> int:
        return passes * 2 * math.prod(input_shape[:-1]) * (math.prod(input_weights) + math.prod(hidden_weights))
    return count


LSTM_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: lstm_layer_flops(1),
              torch.ops.aten.mkldnn_rnn_layer_backward: lstm_layer_flops(2)}


def training_flops_per_token(config: dict, vocab: Vocab) -> float:
    """Measured (torch.utils.flop_counter) floating-point operations of one training step (forward and backward)
    on a batch of `config`, per training token."""
    model = make_model(config, vocab)
    (inputs, targets), = random_batches(config, vocab, 1)
    with FlopCounterMode(display=False, custom_mapping=LSTM_FLOPS) as counter:
        F.cross_entropy(model(inputs), targets).backward()
    return counter.get_total_flops() / inputs[:, 0].numel()


def training_seconds_per_token(config: dict, vocab: Vocab, steps: int = 30) -> float:
    """Wall time of `steps` training steps of `config` (forward, backward, clipping, optimiser), alone in this
    process with its threads, per training token; one step runs before the clock starts."""
    model = make_model(config, vocab).train()
    optimizer, _ = make_optimizer(model, config, steps + 1)  # the learning rate does not change the cost
    batches = random_batches(config, vocab, steps + 1)
    for step, (inputs, targets) in enumerate(batches):
        if step == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        optimizer.step()
    return (time.perf_counter() - started) / (steps * inputs[:, 0].numel())


# ---------------------------------------------------------------- checkpoints
POSITIONS_KEY = "pos_encoder.pe"  # a fixed table, recomputed by the model: not worth storing


def save_checkpoint(model: nn.Module, config: dict, path: Path) -> None:
    """The configuration and the weights in half precision (tied weights stay shared: stored once)."""
    state = copy.deepcopy(model).half().state_dict()
    torch.save({"config": config, "state_dict": {k: v for k, v in state.items() if k != POSITIONS_KEY}}, path)


def load_checkpoint(path: Path, vocab: Vocab) -> nn.Module:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = make_model(saved["config"], vocab)
    result = model.load_state_dict(saved["state_dict"], strict=False)  # half precision is copied into float32
    recomputed = [POSITIONS_KEY] if POSITIONS_KEY in model.state_dict() else []
    if result.missing_keys != recomputed or result.unexpected_keys:
        raise ValueError(f"{path} does not match its model: {result}")
    return model


# ---------------------------------------------------------------- fill in the blanks
TOKEN = re.compile(r"\[mask\]|\w+|[^\w\s]")


def sentence_tokens(sentence: str) -> list[str]:
    """Lowercase words and punctuation marks as separate tokens; `[MASK]` (any case) stays one token."""
    return TOKEN.findall(sentence.lower())


def sentence_ids(sentence: str, vocab: Vocab) -> torch.Tensor:
    """`sentence_tokens` as ids; `[MASK]` becomes `<mask>`, words outside the vocabulary `<unk>`."""
    return token_ids(sentence_tokens(sentence), vocab)


def token_ids(tokens: list[str], vocab: Vocab) -> torch.Tensor:
    return torch.tensor([MASK_ID if t == "[mask]" else vocab.stoi.get(t, UNK_ID) for t in tokens], dtype=torch.long)


@torch.no_grad()
def fill_mask(model: nn.Module, vocab: Vocab, sentence: str, k: int = 5,
              window: int = EVAL_SEQ_LEN) -> list[list[tuple[str, float]]]:
    """The top-k words and their probabilities for each `[MASK]`, renormalised over real words (no specials).
    A text longer than `window` tokens is cut into consecutive windows of `window` tokens, as in training and
    evaluation: each `[MASK]` is predicted from the window that contains it."""
    ids = sentence_ids(sentence, vocab)
    if not (ids == MASK_ID).any():
        raise ValueError(f"no [MASK] in {sentence!r}")
    return fill_ids(model, vocab, ids, k, window)


@torch.no_grad()
def fill_ids(model: nn.Module, vocab: Vocab, ids: torch.Tensor, k: int = 5,
             window: int = EVAL_SEQ_LEN) -> list[list[tuple[str, float]]]:
    """`fill_mask` of a token-id sequence: one candidate list per `<mask>`, in the order they occur."""
    model.eval()
    windows = [w for w in ids.split(window) if (w == MASK_ID).any()]
    logits = []
    for length in dict.fromkeys(len(w) for w in windows):  # full windows in one batch, the shorter last one alone
        batch = torch.stack([w for w in windows if len(w) == length])
        logits.append(model(pack(batch, batch == MASK_ID)).float())
    logits = torch.cat(logits)  # windows in order, masks row-major: the masks' order in the text
    logits[:, [UNK_ID, MASK_ID]] = -math.inf
    probs, top = logits.softmax(-1).topk(k, -1)
    return [[(vocab.itos[i], p) for i, p in zip(row.tolist(), prob.tolist())] for row, prob in zip(top, probs)]


# ---------------------------------------------------------------- the experiments
CHANGES = {  # candidate changes to the baseline, at the same parameter budget and the same tokens seen
    "loss on masked positions only": {"loss_on": "masked"},
    "mask 30% of the training words": {"mask_rate": 0.3},
    "80/10/10 corruption": {"bert": True},
    "dynamic masking": {"dynamic": True},
    "tied embeddings": {"tied": True},
    "pre-LayerNorm": {"pre_norm": True},
    "AdamW, warmup, cosine decay": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01, "warmup": 0.05},
    "dropout 0.1": {"dropout": 0.1},
    "output bias = log unigram frequencies": {"unigram_bias": True},
    "embeddings initialised from PPMI + SVD": {"ppmi_init": True},
}
ALL_CHANGES = {key: value for change in CHANGES.values() for key, value in change.items()}


def make_config(name: str | None = None, smoke: bool = False, **changes) -> dict:
    """BASELINE with `changes`, named `name`; without a name, the shipped model (BASELINE | RECIPE). The smoke
    profile trains one epoch on the first 20k tokens of each split."""
    if name is None:
        name, changes = SHIPPED_RUN, RECIPE | changes
    config = BASELINE | changes | {"name": name}
    return config | ({"limit": 20_000, "epochs": 1} if smoke else {})


def ablation_configs(smoke: bool = False) -> dict[str, dict]:
    """Every change together, and every change but one, in turn (that change's own effect)."""
    configs = {"all changes": make_config("all_changes", smoke, **ALL_CHANGES)}
    for label, change in CHANGES.items():
        reverted = ALL_CHANGES | {key: BASELINE[key] for key in change}
        configs[f"without {label}"] = make_config(f"without_{change_slug(label)}", smoke, **reverted)
    return configs


def change_slug(label: str) -> str:
    return re.sub(r"\W+", "_", label.lower()).strip("_")


def hyperparameters(config: dict) -> dict:
    """A run's configuration without what `make_config` sets: its name and profile (epochs, token limit)."""
    return {key: value for key, value in config.items() if key not in ("name", "limit", "epochs")}


def seed_configs(config: dict, seeds=(1, 2)) -> list[dict]:
    """`config` again under other seeds (named `<name>_seed<n>`)."""
    return [config | {"seed": seed, "name": f"{config['name']}_seed{seed}"} for seed in seeds]


LSTM_CHOICES = {  # label -> changes to RECIPE, chosen between on dev
    "BiLSTM 256, 4 epochs": {"epochs": 4},
    "BiLSTM 256, 8 epochs": {"epochs": 8},
}


def unrestricted_configs(smoke: bool = False) -> dict[str, dict]:
    """Without the budget: a different architecture and objective, the bidirectional LSTM, at two lengths."""
    return {label: make_config(f"cloze_{change_slug(label)}", smoke, **(RECIPE | change))
            for label, change in LSTM_CHOICES.items()}


def summarize(*, protocol: str, profile: str, unigram: dict, count: dict, count_label: str, tutorial_seeds: list,
              same_label: str, same_seeds: list, flops_ratio: float, time_ratio: float, lstm_label: str,
              lstm_seeds: list, lstm_flops_ratio: float, final: dict, ablation: dict, unrestricted: dict) -> dict:
    """results.json from the Challenge notebook's measurements: the references (unigram metrics per split, the
    count run chosen on dev, the tutorial's seeds), the same-resources and unrestricted models chosen on dev
    (seed 0 first) with their cost ratios, the final system's run, and every trained run by label."""
    tutorial, same, lstm = tutorial_seeds[0], same_seeds[0], lstm_seeds[0]
    reseeded = (("tutorial MLM", tutorial_seeds[1:]), ("same-resources model", same_seeds[1:]),
                (lstm_label, lstm_seeds[1:]))
    trained = {"tutorial MLM": tutorial} | ablation | {
        f"{label}, seed {r['config']['seed']}": r for label, runs in reseeded for r in runs} | unrestricted
    results = {
        "data": f"WikiText-2 masked words, {protocol} protocol" + (
            " (train: valid file minus 10% articles; test file)" if protocol == "offline" else ""),
        "profile": profile, "dataset": "wikitext2", "protocol": protocol,
        "unigram_ppl": unigram["test"]["perplexity"], "unigram_top1": unigram["test"]["top1"],
        "count_baseline_ppl": count["test"]["perplexity"], "count_baseline_top1": count["test"]["top1"],
        "count_baseline_model": count_label,
        "baseline_ppl": tutorial["test"]["perplexity"], "baseline_top1": tutorial["test"]["top1"],
        "baseline_ppl_by_seed": [r["test"]["perplexity"] for r in tutorial_seeds],
        "same_resources_ppl": same["test"]["perplexity"], "same_resources_top1": same["test"]["top1"],
        "same_resources_model": same_label, "same_resources_flops_ratio": flops_ratio,
        "same_resources_time_ratio": time_ratio,
        "same_resources_ppl_by_seed": [r["test"]["perplexity"] for r in same_seeds],
        "neural_best_ppl": lstm["test"]["perplexity"], "neural_best_top1": lstm["test"]["top1"],
        "neural_best_model": lstm_label, "neural_best_ppl_by_seed": [r["test"]["perplexity"] for r in lstm_seeds],
        "neural_best_flops_ratio": lstm_flops_ratio,
        "final_ppl": final["test"]["perplexity"], "final_top1": final["test"]["top1"],
        "final_model": f"ensemble of {len(lstm_seeds)} {lstm_label} seeds + {count_label}, "
                       f"λ = {final['count_weight']}",
        "unrestricted_model": lstm_label,  # the committed predictor: the LSTM alone (seed 0)
        "train_minutes_all_runs": sum(r["train_seconds"] for r in trained.values()) / 60,
        "trained_runs": len(trained),
        "models": {"unigram": unigram["test"], "count baseline": count["test"], "ensemble": final["ensemble_test"],
                   "final system": final["test"]} | {label: _run_summary(r) for label, r in trained.items()},
    }
    results["headline"] = {
        "test ppl": f"{results['final_ppl']:.0f} final (LSTM ensemble + counts), {results['neural_best_ppl']:.0f} "
                    f"LSTM alone, {results['count_baseline_ppl']:.0f} count baseline, "
                    f"{results['same_resources_ppl']:.0f} same cost, {results['baseline_ppl']:.0f} tutorial MLM",
        "top-1": f"{results['final_top1']:.3f} final vs {results['count_baseline_top1']:.3f} counts, "
                 f"{results['baseline_top1']:.3f} tutorial MLM",
    }
    return results


def _run_summary(r: dict) -> dict:
    return r["test"] | {"parameters": r["params"], "tokens_seen": r["tokens_seen"], "train_seconds": r["train_seconds"]}


# ---------------------------------------------------------------- the committed predictor
TOP_K = 5
DEMO_SENTENCES = ("the [MASK] of the united states", "he was born in [MASK] and died in 1990 .",
                  "the river flows into the [MASK] sea .")
LONG_TEXT = ("the city lies on the north bank of the river , and its old town was built around a castle . "
             "in the nineteenth century the railway reached the city , and the population grew quickly . ")


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json` and `folder/vocab.json` for the model the notebook saved there (`WEIGHTS`): the
    vocabulary is rebuilt from the training split its configuration names (the prepared data), the scores come
    from the results.json beside `folder`; reads files only."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the notebook's checkpoint cell saves it")
    config = torch.load(weights, map_location="cpu", weights_only=True)["config"]
    vocab = load_corpus(config["protocol"], config["limit"]).vocab
    model = load_checkpoint(weights, vocab)  # the vocabulary fits the saved embedding, or this raises
    (folder / VOCAB_FILE).write_text(json.dumps(vocab.itos, ensure_ascii=False) + "\n", encoding="utf-8")
    train_file, dev_file, _ = PROTOCOLS[config["protocol"]]
    training_files = train_file + (" minus its held-out 10% of articles (seed 0)" if dev_file is None else "")
    results = load_results(folder.parent) if (folder.parent / "results.json").is_file() else {}
    scores = results.get("models", {}).get(results.get("unrestricted_model"), {})
    return write_manifest(
        folder, challenge="mlm", task="masked-word prediction: the most likely words for each [MASK] of a text",
        model={"class": f"common.{type(model).__name__}", "builder": "common.make_model(config, vocab)",
               "config": model_config(config), "parameters": parameter_count(model),
               "max_length": model.pos_encoder.pe.shape[0] if hasattr(model, "pos_encoder") else None,
               "output": "logits over the vocabulary at the masked positions; probabilities are their softmax "
                         "over real words (<unk> and <mask> excluded)"},
        vocabulary={"file": VOCAB_FILE, "words": len(vocab), "specials": [UNK, MASK],
                    "format": "JSON list of the words in id order",
                    "source": f"the training split of the {config['protocol']} protocol: {training_files}"
                              + (f", its first {config['limit']:,} tokens" if config["limit"] else "")
                              + "; lowercased WikiText tokens by decreasing frequency",
                    "unknown": "words outside the vocabulary become <unk>"},
        input={"tokenizer": "common.sentence_tokens: lowercased, words (\\w+) and punctuation marks as separate "
                            "tokens, [MASK] (any case) one token; WikiText's @-@ conventions are not reproduced",
               "window": config["bptt"], "eval_window": EVAL_SEQ_LEN,
               "windows": f"a text longer than {config['bptt']} tokens is cut into consecutive {config['bptt']}-token "
                          "windows, as in training and evaluation; each [MASK] is predicted from the window "
                          "that contains it"},
        top_k=TOP_K,
        weights={"file": WEIGHTS, "bytes": weights.stat().st_size,
                 "format": "{config, state_dict} with fp16 floats: torch.load(weights_only=True), the positional "
                           "table recomputed (common.load_checkpoint)"},
        source={"run": config["name"], "recipe": hyperparameters(config), "epochs": config["epochs"],
                "data": results.get("data"), "profile": results.get("profile"),
                "test": {key: scores.get(key) for key in ("perplexity", "top1", "top5", "positions")},
                "train_seconds": scores.get("train_seconds"), "results": "results.json (unrestricted_model)"},
        smoke=smoke)


class MlmPredictor:
    """The saved model and its vocabulary: `predict(sentences)` gives one row per [MASK]."""

    def __init__(self, manifest: dict, model: nn.Module, vocab: Vocab):
        self.manifest, self.model, self.vocab = manifest, model.eval(), vocab
        self.window, self.top_k = manifest["input"]["window"], manifest["top_k"]

    def predict(self, sentences) -> pd.DataFrame:
        """A string or a list of strings: columns sentence (its index), mask (1, 2, ... within the sentence),
        position (token index), context, prediction, probability, top words, warning, error. A sentence that
        cannot be scored (not text, empty, no [MASK]) gets one row with its error; a [MASK] whose window holds no
        known word gets a warning."""
        sentences = [sentences] if isinstance(sentences, str) or not isinstance(sentences, list | tuple) \
            else sentences
        rows = []
        for index, sentence in enumerate(sentences):
            try:
                rows += [{"sentence": index, **row, "error": ""} for row in self._fill(sentence)]
            except ValueError as e:
                rows.append({"sentence": index, "context": "", "prediction": "", f"top {self.top_k}": "",
                             "warning": "", "error": str(e)})
        columns = ["sentence", "mask", "position", "context", "prediction", "probability", f"top {self.top_k}",
                   "warning", "error"]
        return pd.DataFrame(rows, columns=columns).astype({"mask": "Int64", "position": "Int64", "probability": float})

    def _fill(self, sentence) -> list[dict]:
        if not isinstance(sentence, str):
            raise ValueError(f"expected a text, got {type(sentence).__name__}")
        tokens = sentence_tokens(sentence)
        if not tokens:
            raise ValueError("empty sentence")
        ids = token_ids(tokens, self.vocab)
        positions = (ids == MASK_ID).nonzero().flatten().tolist()
        if not positions:
            raise ValueError(f"no [MASK] in {shorten(sentence)!r}")
        filled = fill_ids(self.model, self.vocab, ids, self.top_k, self.window)
        return [{"mask": n, "position": position, "context": context(tokens, position),
                 "prediction": top[0][0], "probability": round(top[0][1], 4),
                 f"top {self.top_k}": ", ".join(f"{word} {p:.3f}" for word, p in top),
                 "warning": self._warning(ids, position)}
                for n, (position, top) in enumerate(zip(positions, filled), 1)]

    def _warning(self, ids: torch.Tensor, position: int) -> str:
        start = position // self.window * self.window
        around = ids[start:start + self.window]
        if ((around != UNK_ID) & (around != MASK_ID)).any():
            return ""
        return "no word of its window is in the vocabulary: the guess rests on word frequencies alone"

    def __repr__(self) -> str:
        test = self.manifest["source"]["test"]
        quality = f", test top-1 {test['top1']:.1%}" if test.get("top1") is not None else ""
        return (f"mlm masked-word predictor ({self.manifest['source']['run']}), {len(self.vocab):,} words, "
                f"{self.window}-token windows, top {self.top_k}{quality}")


def shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def context(tokens: list[str], position: int, width: int = 4) -> str:
    """The tokens around `position`, the masked one shown as [MASK]."""
    left, right = tokens[max(0, position - width):position], tokens[position + 1:position + 1 + width]
    return " ".join(["..."] * (position > width) + left + ["[MASK]"] + right + ["..."] * (
        position + 1 + width < len(tokens)))


def load_predictor(folder=CHECKPOINTS) -> MlmPredictor:
    """The predictor `export_predictor` described in `folder` (its manifest, vocabulary and fp16 weights only)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights, vocab_file = named_files(folder, manifest["weights"]["file"], manifest["vocabulary"]["file"])
    vocab = Vocab.from_words(json.loads(vocab_file.read_text(encoding="utf-8")))
    return MlmPredictor(manifest, load_checkpoint(weights, vocab), vocab)


def long_text(words: int = 6_000, masks: tuple[int, ...] = (40, 5_950)) -> str:
    """`words` words of plain text with [MASK] at the word indices `masks`: longer than the model's positions."""
    base = LONG_TEXT.split()
    text = [base[i % len(base)] for i in range(words)]
    for i in masks:
        text[i] = "[MASK]"
    return " ".join(text)


def demo_inputs() -> list[str]:
    """The notebook's sentences, then inputs that must be refused with a reason (empty, no [MASK]), a text of
    6,000 words with two [MASK]s (scored window by window) and one of unknown words only (a warning)."""
    return [*DEMO_SENTENCES, "", "a sentence without a blank .", long_text(), "zxq [MASK] qqzx"]
