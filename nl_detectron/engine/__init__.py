"""Training with context blocks: their health while training, their optimizer settings and the
checks at the start of training."""

from .block_health import BlockHealthMonitor, context_blocks, format_health
from .optimizer import build_nonlocal_optimizer, get_nonlocal_optimizer_params
from .training_checks import (
    BlockTrainingChecks,
    BlockTrainingWarning,
    check_block_training,
    check_training_config,
)

__all__ = [
    "BlockHealthMonitor",
    "BlockTrainingChecks",
    "BlockTrainingWarning",
    "build_nonlocal_optimizer",
    "check_block_training",
    "check_training_config",
    "context_blocks",
    "format_health",
    "get_nonlocal_optimizer_params",
]
