"""BlockHealthMonitor in detectron2's training loop, its block names, MONITOR_PERIOD's checks."""

import itertools
import json
import logging
from collections import OrderedDict

import pytest
import torch
import torch.distributed as dist
from torch import nn

from detectron2.config import get_cfg
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.utils.events import JSONWriter

from nl_detectron import add_nonlocal_config
from nl_detectron.engine import BlockHealthMonitor, context_blocks
from nl_detectron.engine.block_health import DEFAULT_PERIOD
from nl_detectron.layers import ContextBlock, NonLocalBlock
from nl_detectron.modeling import StageContextUnit, check_nonlocal_config

STATS = ("gate", "share", "entropy", "diversity")


class TinyDetector(nn.Module):
    """An NL block as a backbone stage unit and a GC block in a head; loss = mean(z^2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        unit = StageContextUnit(NonLocalBlock(8, norm=""), 8)
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Module()
        self.backbone.bottom_up.res4 = nn.Sequential(OrderedDict(nonlocal1=unit))
        self.keypoint_head = nn.Sequential(OrderedDict(nonlocal2=ContextBlock(8, ratio=0.25)))

    def forward(self, x):
        z = self.keypoint_head(self.backbone.bottom_up.res4(x))
        return {"loss": z.square().mean()}


def _train(model, extra_hooks, max_iter, writer_period=1, out=None):
    """detectron2's SimpleTrainer for ``max_iter`` steps on one fixed input; returns the
    metrics.json lines (JSONWriter every ``writer_period`` iterations)."""
    data = itertools.repeat(torch.randn(2, 8, 5, 6))
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    path = str(out / "metrics.json")
    writer = hooks.PeriodicWriter([JSONWriter(path)], period=writer_period)
    trainer.register_hooks([*extra_hooks, writer])
    trainer.train(0, max_iter)
    with open(path) as f:
        return [json.loads(line) for line in f]


def _health_keys(line):
    return sorted(k for k in line if k.startswith("nonlocal/"))


def test_block_names_are_short_unique_module_paths():
    model = TinyDetector()
    assert list(context_blocks(model)) == ["res4.nonlocal1", "keypoint_head.nonlocal2"]
    clash = nn.Module()
    clash.a, clash.b = TinyDetector(), TinyDetector()
    assert list(context_blocks(clash)) == [
        "a.backbone.bottom_up.res4.nonlocal1",
        "a.keypoint_head.nonlocal2",
        "b.backbone.bottom_up.res4.nonlocal1",
        "b.keypoint_head.nonlocal2",
    ]
    nested = nn.Module()
    nested.res4, nested.x = NonLocalBlock(8), nn.Module()
    nested.x.res4 = NonLocalBlock(8)
    assert list(context_blocks(nested)) == ["res4", "x.res4"]
    assert list(context_blocks(NonLocalBlock(8))) == ["NonLocalBlock"]


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def health_log():
    """The monitor's log messages (whether or not a tool's setup_logger stopped propagation)."""
    logger = logging.getLogger("nl_detectron.engine.block_health")
    handler, level = _Messages(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_monitor_writes_the_statistics_on_its_iterations(tmp_path, health_log):
    model = TinyDetector()
    monitor = BlockHealthMonitor(model, period=3)
    lines = _train(model, [monitor], max_iter=8, out=tmp_path)
    recorded = {line["iteration"]: line for line in lines if _health_keys(line)}
    assert sorted(recorded) == [2, 5, 7]  # PeriodicWriter's iterations: (it + 1) % 3 == 0, last
    nl = [f"nonlocal/res4.nonlocal1/{s}" for s in STATS] + ["nonlocal/res4.nonlocal1/path/kept"]
    gc = [f"nonlocal/keypoint_head.nonlocal2/{s}" for s in STATS]
    gc.append("nonlocal/keypoint_head.nonlocal2/path/pooled")
    for line in recorded.values():
        assert _health_keys(line) == sorted(nl + gc)
        assert line["nonlocal/res4.nonlocal1/path/kept"] == 1.0
        assert line["nonlocal/keypoint_head.nonlocal2/diversity"] == 0.0
    # Zero-init: the gate opens as training moves it.
    assert (
        0
        < recorded[2]["nonlocal/res4.nonlocal1/gate"]
        < recorded[7]["nonlocal/res4.nonlocal1/gate"]
    )
    messages = [m for m in health_log if "block health" in m]
    assert len(messages) == 3
    assert messages[0].startswith("block health @ iter 2: res4.nonlocal1 gate ")
    assert " path kept; keypoint_head.nonlocal2 gate " in messages[0]
    assert messages[0].endswith(" path pooled")
    assert not any(b.record_health for b in context_blocks(model).values())


class _ForwardAfterStep(HookBase):
    """Runs the model after each step, as evaluation or PreciseBN would, noting the blocks' arm."""

    def __init__(self, model):
        self.model, self.armed = model, []

    def after_step(self):
        self.armed.append(any(b.record_health for b in context_blocks(self.model).values()))
        block = self.model.backbone.bottom_up.res4.nonlocal1.block
        before = block.last_health
        with torch.no_grad():
            self.model(torch.randn(1, 8, 5, 6))
        assert block.last_health is before


def test_later_hooks_run_the_model_unarmed(tmp_path):
    model = TinyDetector()
    later = _ForwardAfterStep(model)
    _train(model, [BlockHealthMonitor(model, period=2), later], max_iter=4, out=tmp_path)
    assert later.armed == [False] * 4


class _SwitchToExplicit(HookBase):
    def __init__(self, block, at):
        self.block, self.at = block, at

    def before_step(self):
        self.block.explicit = self.trainer.iter >= self.at


def test_path_is_one_hot_over_the_paths_the_block_took(tmp_path):
    model = TinyDetector()
    block = model.backbone.bottom_up.res4.nonlocal1.block
    switch = _SwitchToExplicit(block, at=2)
    lines = _train(model, [switch, BlockHealthMonitor(model, period=2)], max_iter=4, out=tmp_path)
    paths = {
        line["iteration"]: {
            k.rsplit("/", 1)[1]: v for k, v in line.items() if "nonlocal1/path" in k
        }
        for line in lines
        if _health_keys(line)
    }
    assert paths == {1: {"kept": 1.0}, 3: {"explicit": 1.0, "kept": 0.0}}


def test_period_zero_records_nothing(tmp_path):
    model = TinyDetector()
    lines = _train(model, [BlockHealthMonitor(model, period=0)], max_iter=3, out=tmp_path)
    assert not any(_health_keys(line) for line in lines)
    assert all(b.last_health is None for b in context_blocks(model).values())


def test_model_without_blocks_records_nothing(tmp_path):
    model = nn.Module()
    model.conv = nn.Conv2d(8, 8, 1)
    model.forward = lambda x: {"loss": model.conv(x).square().mean()}
    monitor = BlockHealthMonitor(model, period=1)
    assert monitor.blocks == {}
    lines = _train(model, [monitor], max_iter=2, out=tmp_path)
    assert not any(_health_keys(line) for line in lines)


def test_ddp_wrapper_is_unwrapped(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = TinyDetector()
        wrapped = nn.parallel.DistributedDataParallel(model)
        monitor = BlockHealthMonitor(wrapped, period=2)
        assert monitor.blocks == context_blocks(model)
        lines = _train(wrapped, [monitor], max_iter=2, out=tmp_path)
    finally:
        dist.destroy_process_group()
    assert "nonlocal/res4.nonlocal1/entropy" in lines[-1]


@pytest.mark.parametrize("period", [-1, 2.5, True, "20"])
def test_bad_period_is_rejected(period):
    with pytest.raises(ValueError, match=rf"BlockHealthMonitor\(period\)={period!r} is invalid"):
        BlockHealthMonitor(TinyDetector(), period=period)
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.MODEL.NONLOCAL.MONITOR_PERIOD = period
    with pytest.raises(
        ValueError,
        match=rf"MODEL\.NONLOCAL\.MONITOR_PERIOD={period!r} is invalid; allowed: an integer >= 0",
    ):
        check_nonlocal_config(cfg)


def test_config_default_is_the_hooks_default():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    assert cfg.MODEL.NONLOCAL.MONITOR_PERIOD == DEFAULT_PERIOD == 20
    check_nonlocal_config(cfg)
