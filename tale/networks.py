"""tale/networks.py: TALE ported to PyTorch, its same-cost variant, and a DeepGOCNN-style convolutional model.

Every model maps residue codes [batch, length] (0 = padding) to one logit per GO term [batch, terms].
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .proteins import VOCAB_SIZE


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim]: sines then cosines with geometric timescales 1..1e4 (TALE's, from tensor2tensor)."""
    half = dim // 2
    inv_timescales = torch.exp(torch.arange(half) * -(math.log(1e4) / (half - 1)))
    angles = torch.arange(length)[:, None] * inv_timescales[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class EncoderLayer(nn.Module):
    """Pre-LN Transformer layer: x + drop(attn(LN x)), then x + drop(ffn(LN x)); no biases in attention."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = ~key_padding[:, None, None, :]  # True where attending is allowed
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, dim)), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.norm2(x)), self.dropout, self.training)


class SequenceEncoder(nn.Module):
    """Residue embedding (scaled by sqrt(dim)) + sinusoidal positions, pre-LN Transformer, final LayerNorm."""

    def __init__(self, dim: int = 64, layers: int = 6, heads: int = 2, ffn_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        self.dim, self.dropout = dim, dropout
        self.embedding = nn.Embedding(VOCAB_SIZE, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, 0.0, dim ** -0.5)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        padding = codes == 0
        x = self.embedding(codes) * self.dim ** 0.5 * (~padding)[..., None]
        x = x + sinusoidal_positions(codes.shape[1], self.dim).to(x)
        x = F.dropout(x, self.dropout, self.training)
        for layer in self.layers:
            x = layer(x, padding)
        return self.norm(x)


class HierarchicalLabelEmbedding(nn.Module):
    """A term's embedding is the sum of its own and its ancestors' free vectors (TALE's label embedding)."""

    def __init__(self, ancestor_matrix: np.ndarray, dim: int):
        super().__init__()
        terms = ancestor_matrix.shape[0]
        self.dim = dim
        self.weight = nn.Parameter(torch.randn(terms, dim) * dim ** -0.5)
        self.register_buffer("ancestors", torch.as_tensor(ancestor_matrix), persistent=False)  # padded with `terms`

    def forward(self) -> torch.Tensor:
        padded = torch.cat([self.weight, self.weight.new_zeros(1, self.dim)])
        return padded[self.ancestors].sum(1) * self.dim ** 0.5


class JointSimilarityPooling(nn.Module):
    """Residue-label similarities -> softmax over labels -> Conv1D over positions -> max over filters ->
    softmax over positions: attention weights that pool the residue embeddings (TALE's joint similarity)."""

    def __init__(self, terms: int, filters: int = 10, kernel: int = 10):
        super().__init__()
        self.conv = nn.Conv1d(terms, filters, kernel)
        self.kernel = kernel

    def forward(self, residues: torch.Tensor, labels: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        similarity = torch.softmax(residues @ labels.T, dim=-1)  # [batch, length, terms]
        similarity = similarity.masked_fill(padding[..., None], 0)  # padded rows: zeros, as in a lone sequence
        # 'same' padding as Keras does it for an even kernel: one more zero on the right
        left = (self.kernel - 1) // 2
        scores = F.relu(self.conv(F.pad(similarity.transpose(1, 2), (left, self.kernel - 1 - left))))
        scores = scores.amax(1).masked_fill(padding, -torch.inf)  # [batch, length]
        return (torch.softmax(scores, dim=-1)[:, None] @ residues).squeeze(1)


class TALE(nn.Module):
    """Sequence encoder + hierarchical label embedding + joint-similarity pooling + Dense(terms).

    The hierarchy regulariser lives in `TALELoss`; `forward` returns logits (sigmoid gives TALE's outputs).
    """

    def __init__(self, ancestor_matrix: np.ndarray, dim: int = 64, layers: int = 6, heads: int = 2,
                 ffn_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        terms = ancestor_matrix.shape[0]
        self.encoder = SequenceEncoder(dim, layers, heads, ffn_dim, dropout)
        self.labels = HierarchicalLabelEmbedding(ancestor_matrix, dim)
        self.pool = JointSimilarityPooling(terms)
        self.head = nn.Linear(dim, terms)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        residues = self.encoder(codes)
        return self.head(self.pool(residues, self.labels(), codes == 0))


class TALELoss(nn.Module):
    """Binary cross-entropy + `weight` * mean(relu(p_child - p_parent)) over the ontology's edges."""

    def __init__(self, edges: np.ndarray, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.register_buffer("edges", torch.as_tensor(edges), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, targets.float())
        if self.weight and len(self.edges):
            probabilities = torch.sigmoid(logits)
            parent, child = probabilities[:, self.edges[:, 0]], probabilities[:, self.edges[:, 1]]
            loss = loss + self.weight * F.relu(child - parent).mean()
        return loss


class DeepGOCNN(nn.Module):
    """One-hot residues -> parallel Conv1d banks of growing kernel sizes -> global max pool -> Dense(terms)
    (DeepGOCNN, Kulmanov & Hoehndorf 2020): each filter is a learned motif detector, the max says whether
    the motif occurs anywhere in the protein."""

    def __init__(self, terms: int, filters: int = 128, kernels=(8, 16, 24, 32, 40, 48, 56, 64), dropout=0.0):
        super().__init__()
        self.banks = nn.ModuleList(nn.Conv1d(VOCAB_SIZE - 1, filters, k) for k in kernels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(filters * len(kernels), terms)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(codes.long(), VOCAB_SIZE)[..., 1:].transpose(1, 2).float()  # padding -> all zeros
        if onehot.shape[2] < self.banks[-1].kernel_size[0]:
            onehot = F.pad(onehot, (0, self.banks[-1].kernel_size[0] - onehot.shape[2]))
        lengths = (codes != 0).sum(1, keepdim=True)
        pooled = torch.cat([self._max_over_windows(bank, onehot, lengths) for bank in self.banks], dim=1)
        return self.head(self.dropout(pooled))

    @staticmethod
    def _max_over_windows(bank: nn.Conv1d, onehot: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Max over the windows that lie inside the sequence (the first one only, for a sequence shorter than the
        kernel), so that a protein's output does not depend on how much its batch is padded."""
        out = bank(onehot)
        last_start = (lengths - bank.kernel_size[0]).clamp(min=0)  # [batch, 1]
        outside = torch.arange(out.shape[2], device=out.device) > last_start
        return out.masked_fill(outside[:, None, :], -torch.inf).amax(2)
