"""Behaviour shared by all context blocks: input and query checks, the explicit-affinity switch,
health recording."""

from typing import Callable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from .attention import plan_aggregation
from .attention_policy import PathChoice, check_budget_mb
from .health import (
    DEFAULT_HEALTH_QUERIES,
    BlockHealth,
    PendingHealth,
    relative_change,
    rms,
    row_statistics,
    sample_queries,
)


class NonLocalBase(nn.Module):
    """Base class of the blocks; maps [B, C, *spatial] to the same shape.

    Attributes:
        explicit (bool): when True, ``forward`` builds the N x M affinity explicitly instead of
            running the fast path (for checks and benchmarks). Default False.
        chunk_size (int or None): with ``explicit``, how many query rows of the affinity are built
            at a time; None builds all N rows at once.
        affinity_budget_mb (float or None): most MiB the fast path's pairwise aggregation may hold
            at its peak, N x M-shaped buffers and per-position operands and gradients together
            (see :mod:`nl_detectron.layers.attention_policy`); None is the device's default.
            SNL, GC and the dot product never build N x M and do not use it.
        use_triton (bool): run the pairwise aggregation in nl_detectron's Triton kernels
            (CUDA; nothing N x M stored, so ``affinity_budget_mb`` plays no part). Only blocks
            with such an aggregation (``has_triton_kernels``). Default False: opt-in until timed
            on GPUs (docs/attention_paths.md).
        last_path (PathChoice or None): the path the last fast forward took, for benchmarks and
            checks (None before the first, and for blocks with a single path).
        record_health (bool): when True, every forward in training mode stores its statistics
            in ``last_health`` (:mod:`nl_detectron.layers.health`). Default False: no extra work.
        health_queries (int): most query rows sampled for the attention statistics (64).
        last_health (BlockHealth or None): the last recording forward's statistics (None before
            one; assign None to clear). Read lazily: the forward keeps a small tensor and syncs
            nothing.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.dim = dim
        self.explicit = False
        self.chunk_size: Optional[int] = None
        self._affinity_budget_mb: Optional[float] = None
        self._use_triton = False
        self.last_path: Optional[PathChoice] = None
        self._unmet_budgets: Set[tuple] = set()  # warned once each, see plan_aggregation
        self.record_health = False
        self._health_queries = DEFAULT_HEALTH_QUERIES
        self._health: Union[BlockHealth, PendingHealth, None] = None

    @property
    def affinity_budget_mb(self) -> Optional[float]:
        return self._affinity_budget_mb

    @affinity_budget_mb.setter
    def affinity_budget_mb(self, value) -> None:
        self._affinity_budget_mb = check_budget_mb(type(self).__name__, value)

    @property
    def has_triton_kernels(self) -> bool:
        """Whether this block's aggregation has Triton kernels (blocks that build none: False)."""
        return False

    @property
    def use_triton(self) -> bool:
        return self._use_triton

    @use_triton.setter
    def use_triton(self, value) -> None:
        name = type(self).__name__
        if not isinstance(value, bool):
            raise ValueError(f"{name}: use_triton={value!r} must be True or False")
        if value and not self.has_triton_kernels:
            raise ValueError(
                f"{name}: use_triton=True, but this block has no pairwise aggregation to run in "
                "Triton; allowed for NonLocalBlock (all instantiations but 'dot_product') and "
                "DisentangledNonLocalBlock"
            )
        self._use_triton = value

    def plan_aggregation(self, kind: str, q, k, v, unary: bool = False) -> PathChoice:
        """The policy's path for this block's aggregation (recorded in ``last_path``); ``unary``:
        DNL's unary term also sums v (see ``AggregationCall``)."""
        self.last_path = plan_aggregation(
            kind,
            q,
            k,
            v,
            self.affinity_budget_mb,
            warned=self._unmet_budgets,
            triton=self.use_triton,
            unary=unary,
        )
        return self.last_path

    @property
    def health_queries(self) -> int:
        return self._health_queries

    @health_queries.setter
    def health_queries(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(self).__name__}: health_queries={value!r} must be an int >= 1")
        self._health_queries = value

    def gate_weights(self) -> List[torch.Tensor]:
        """The zero-initialised scale that gates the block's output (each block type says which)."""
        raise NotImplementedError

    def gate_rms(self) -> float:
        """RMS of :meth:`gate_weights`: 0 while the block is the identity of its zero init."""
        return float(rms(self.gate_weights()))

    @property
    def recording(self) -> bool:
        """Whether this forward records its health: ``record_health`` in training mode."""
        return self.record_health and self.training

    @property
    def last_health(self) -> Optional[BlockHealth]:
        if isinstance(self._health, PendingHealth):
            self._health = self._health.resolve()
        return self._health

    @last_health.setter
    def last_health(self, value: Optional[BlockHealth]) -> None:
        if value is not None and not isinstance(value, BlockHealth):
            raise ValueError(f"{type(self).__name__}: last_health must be None or a BlockHealth")
        self._health = value

    def store_health(
        self,
        x: torch.Tensor,
        delta: torch.Tensor,
        rows: Optional[Callable[[torch.Tensor], torch.Tensor]],
        path: str,
    ) -> None:
        """Record ``last_health`` of a forward of input x [B, C, *S] (no grad).

        Args:
            delta: z - x, what the block adds to its input (any shape of x's size).
            rows: maps sampled flat query positions [Q] of the first sample to their affinity
                rows [Q, M] (non-negative), or None for a block without attention statistics.
            path: the computation path the forward took.
        """
        if x.numel() == 0:
            return  # nothing to measure (e.g. a head's block given no ROI)
        num_positions = x.shape[2:].numel()
        with torch.no_grad():
            values = torch.stack([rms(self.gate_weights()), relative_change(delta, x)])
            sampled = 0
            if rows is not None:
                queries = sample_queries(num_positions, self.health_queries, x.device)
                values = torch.cat([values, row_statistics(rows(queries))])
                sampled = queries.numel()
        self._health = PendingHealth(values, path, sampled)

    def key_shape(self, spatial_shape: Sequence[int]) -> Tuple[int, ...]:
        """The grid of key positions (j) for an input of ``spatial_shape``."""
        return tuple(int(s) for s in spatial_shape)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input [B, {self.in_channels}, "
                f"<{self.dim} spatial dims>], got shape {tuple(x.shape)}"
            )

    def check_queries(self, x: torch.Tensor, queries: torch.Tensor) -> None:
        self.check_input(x)
        num_positions = x.shape[2:].numel()
        if (
            not isinstance(queries, torch.Tensor)
            or queries.dtype != torch.long
            or queries.dim() != 1
        ):
            raise ValueError(
                f"{type(self).__name__}: queries must be a 1-D LongTensor of flat positions, got "
                f"{queries!r}"
            )
        if queries.numel() and (queries.min() < 0 or queries.max() >= num_positions):
            raise ValueError(
                f"{type(self).__name__}: queries must lie in [0, {num_positions}), got values in "
                f"[{int(queries.min())}, {int(queries.max())}]"
            )

    def query_slices(self, num_queries: int) -> List[slice]:
        """The chunks of query rows the explicit path builds at a time (see ``chunk_size``)."""
        step = self.chunk_size or num_queries
        if step <= 0:
            raise ValueError(f"{type(self).__name__}: chunk_size={self.chunk_size!r} must be > 0")
        return [slice(start, start + step) for start in range(0, num_queries, step)]

    def aggregate_rows(
        self, rows: Callable[[slice], torch.Tensor], values: torch.Tensor, num_queries: int
    ) -> torch.Tensor:
        """Explicit y = A @ values, building ``chunk_size`` rows of A [B, n, M] at a time.

        Args:
            rows: maps a slice of query indices to those rows of the affinity, [B, n, M].
            values: [B, M, E].
        Returns:
            [B, num_queries, E]
        """
        parts = [torch.matmul(rows(s), values) for s in self.query_slices(num_queries)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
