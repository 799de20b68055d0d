"""Block health: cheap statistics a context block records from its own forward, when asked.

A block with ``record_health = True`` stores, on each forward in training mode, what its forward
already holds, reduced to a few numbers (:class:`BlockHealth`); everything is computed under
``torch.no_grad()`` from a sample of at most ``health_queries`` query rows of the first sample.

- gate: RMS of the zero-initialised scale (the last norm's gamma, else the output conv weights;
  GC: the last conv of its transform). 0 at init with ``zero_init``.
- share: ||z - x|| / ||x|| over the batch, x the block's input and z its output.
- entropy: mean over sampled queries i of H(p_i) / log(M), p_i = a_i / sum_j a_ij the affinity
  row normalised to sum 1 (M keys; M = 1 counts as uniform). 1 = uniform attention, 0 = one key.
- diversity: mean over sampled queries of 0.5 ||p_i - mean_q p_q||_1, in [0, 1]: 0 when every
  query attends alike (always for GC, whose rows are all equal).

Entropy and diversity need rows without negative entries: they are None for the dot product
(a sign-indefinite affinity) and GC's average pooling (no learned weights). Rows that sum to 0
(concatenation's ReLU, SNL's zero-degree positions) are left out; NaN if every sampled row is.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, NamedTuple, Optional

import torch

# Paths of blocks whose computation has a single form (the policy's names are in attention_policy).
ASSOCIATIVE = "associative"  # dot product and SNL: nothing N x M, by associativity
POOLED = "pooled"  # GC: one context vector per sample
EXPLICIT = "explicit"  # ``block.explicit``: the affinity built with autograd

# The statistics, in the order BlockHealth.scalars gives them.
STATISTICS = ("gate", "share", "entropy", "diversity")
# Query rows sampled per recording forward: Q x M affinity entries, next to nothing beside N x M.
DEFAULT_HEALTH_QUERIES = 64


@dataclass(frozen=True)
class BlockHealth:
    """One recording forward's statistics (see the module docstring for their definitions).

    Attributes:
        gate, share (float): always present.
        entropy, diversity (float or None): None where the block type has no such statistic;
            NaN where no sampled row has a positive sum.
        path (str): the computation path the forward took (``last_path.path``, or
            "associative", "pooled", "explicit").
        queries (int): number of sampled query positions (0 without attention statistics).
    """

    gate: float
    share: float
    entropy: Optional[float]
    diversity: Optional[float]
    path: str
    queries: int

    def scalars(self) -> Dict[str, float]:
        """The statistics this block has: name -> value, in the order gate, share, entropy,
        diversity."""
        stats = {"gate": self.gate, "share": self.share}
        if self.entropy is not None:
            stats.update(entropy=self.entropy, diversity=self.diversity)
        return stats


class PendingHealth(NamedTuple):
    """What a forward stores: the statistics as one tensor, read (synchronised) only when asked.

    ``values``: [gate, share] or [gate, share, entropy, diversity], detached.
    """

    values: torch.Tensor
    path: str
    queries: int

    def resolve(self) -> BlockHealth:
        values = self.values.tolist()
        gate, share = values[:2]
        entropy, diversity = values[2:] if len(values) == 4 else (None, None)
        return BlockHealth(gate, share, entropy, diversity, self.path, self.queries)


def sample_queries(num_positions: int, max_queries: int, device=None) -> torch.Tensor:
    """Q = min(N, max_queries) flat positions evenly strided over [0, N): floor(i N / Q), i < Q."""
    count = min(num_positions, max_queries)
    return torch.arange(count, device=device) * num_positions // count


def rms(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """sqrt(mean of squares) over all entries of ``tensors`` (fp32, detached, 0-d)."""
    tensors = [t.detach().float() for t in tensors]
    total = sum(t.square().sum() for t in tensors)
    return torch.sqrt(total / sum(t.numel() for t in tensors))


def _norm(t: torch.Tensor) -> torch.Tensor:
    """The 2-norm of all entries, in fp32 at least (fp16's range ends at 65504)."""
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))


def relative_change(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||delta|| / ||x|| over all entries, fp32 (0 where delta is 0; inf where only x is)."""
    change, size = _norm(delta), _norm(x)
    return torch.where(change > 0, change / size, 0.0).float()


def row_statistics(rows: torch.Tensor) -> torch.Tensor:
    """[entropy, diversity] (fp32, 0-d each, stacked) of non-negative affinity rows [Q, M].

    p_i = a_i / sum_j a_ij; entropy = mean_i H(p_i) / log M (1 for M = 1),
    diversity = mean_i 0.5 ||p_i - mean_q p_q||_1; both over rows with a positive sum only.
    """
    rows = rows.float()
    sums = rows.sum(dim=1, keepdim=True)  # [Q, 1]
    positive = sums > 0
    p = rows / torch.where(positive, sums, 1.0)  # [Q, M]; rows of sum 0 stay 0
    weight = positive.float()  # [Q, 1]
    count = weight.sum()
    num_keys = rows.shape[1]
    if num_keys > 1:
        entropy = torch.special.entr(p).sum(dim=1, keepdim=True) / math.log(num_keys)
    else:
        entropy = torch.ones_like(weight)
    mean_row = (p * weight).sum(dim=0) / count  # [M]
    distance = 0.5 * (p - mean_row).abs().sum(dim=1, keepdim=True)  # [Q, 1]
    return torch.stack([(entropy * weight).sum() / count, (distance * weight).sum() / count])
