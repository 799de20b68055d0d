"""The checks at the start of training: warnings that name the block; SyncBN on the CPU refused."""

import types
import warnings

import pytest
import torch
from context_nets import HEAD_QUICK, LAZY_QUICK, MAIN_QUICK, ContextNet, quick_cfg
from torch import nn

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.solver import get_default_optimizer_params

from nl_detectron.engine import (
    BlockTrainingChecks,
    BlockTrainingWarning,
    build_nonlocal_optimizer,
    check_block_training,
    check_training_config,
)
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

BACKBONE_BLOCK = "backbone.bottom_up.res4.nonlocal1.block"


def _sgd(model, weight_decay=0.0, weight_decay_norm=0.0):
    params = get_default_optimizer_params(model, weight_decay_norm=weight_decay_norm)
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=weight_decay)


def _no_warnings(model, optimizer, images_per_device):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockTrainingWarning)
        return check_block_training(model, optimizer, images_per_device=images_per_device)


def _quick_model(*opts):
    cfg = quick_cfg(MAIN_QUICK, *opts)
    model = build_model(cfg)
    return model, build_nonlocal_optimizer(cfg, model)


def test_the_quick_configs_warn_nothing():
    model, optimizer = _quick_model()  # GN, SOLVER.WEIGHT_DECAY_NORM 0
    assert _no_warnings(model, optimizer, images_per_device=2) == []
    lazy = LazyConfig.load(LAZY_QUICK)
    lazy.optimizer.params.model = model = instantiate(lazy.model)
    assert _no_warnings(model, instantiate(lazy.optimizer), images_per_device=2) == []


def test_frozen_parameter():
    model = ContextNet(nl_norm="GN")
    model.nl.theta.weight.requires_grad_(False)
    with pytest.warns(BlockTrainingWarning) as record:
        check_block_training(model, _sgd(model), images_per_device=8)
    assert [str(w.message) for w in record] == [
        "Context block nl: parameter(s) theta.weight are frozen (requires_grad=False); training "
        "leaves them at their initial values."
    ]


def test_parameter_outside_the_optimizer():
    model = ContextNet(nl_norm="GN")
    optimizer = _sgd(nn.ModuleList([model.stem, model.nl, model.dnl, model.snl]))
    with pytest.warns(BlockTrainingWarning) as record:
        check_block_training(model, optimizer, images_per_device=8)
    assert len(record) == 1
    assert str(record[0].message).startswith(
        "Context block gc: parameter(s) w_k.weight, w_k.bias, transform.conv1.weight, "
    )
    assert "are in no parameter group of the optimizer" in str(record[0].message)


@pytest.mark.parametrize(
    "block, decay, gate",
    [
        (NonLocalBlock(64, norm="BN"), {"weight_decay_norm": 1e-4}, "0.0001 on out.norm.weight"),
        (NonLocalBlock(64, norm=""), {"weight_decay": 1e-4}, "0.0001 on out.conv.weight"),
        (DisentangledNonLocalBlock(64, norm="GN"), {"weight_decay_norm": 5e-4}, "0.0005 on out"),
        (SpectralNonLocalBlock(64, norm="GN"), {"weight_decay_norm": 1e-4}, "0.0001 on norm."),
        (
            SpectralNonLocalBlock(64, norm="", order=3),
            {"weight_decay": 1e-4},
            "0.0001 on w1.weight, 0.0001 on w2.weight, 0.0001 on w3.weight",
        ),
        (ContextBlock(64), {"weight_decay": 1e-4}, "0.0001 on transform.conv2.weight"),
    ],
    ids=["nl-bn", "nl-none", "dnl-gn", "snl-gn", "snl-none", "gc"],
)
def test_weight_decay_on_the_gate(block, decay, gate):
    model = nn.Sequential()
    model.add_module("context", block)
    with pytest.warns(BlockTrainingWarning) as record:
        check_block_training(model, _sgd(model, **decay), images_per_device=8)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"Context block context: weight decay {gate}")
    assert "pulls the gate back towards 0, shut" in message
    assert "MODEL.NONLOCAL.WEIGHT_DECAY 0.0" in message


def test_no_warning_with_detectrons_default_decay_on_norm_gates():
    # SOLVER.WEIGHT_DECAY_NORM is 0 by default: a norm's scale, the gate of these blocks, is not
    # decayed while every conv weight is.
    model = nn.Sequential(
        NonLocalBlock(64, norm="BN"),
        DisentangledNonLocalBlock(64, norm="GN"),
        SpectralNonLocalBlock(64, norm="GN"),
    )
    optimizer = _sgd(model, weight_decay=1e-4, weight_decay_norm=0.0)
    assert _no_warnings(model, optimizer, images_per_device=8) == []


def test_config_weight_decay_lifts_the_decay_from_the_gate():
    gc = ["MODEL.NONLOCAL.TYPE", "gc"]
    model, optimizer = _quick_model(*gc)
    with pytest.warns(BlockTrainingWarning, match=rf"^Context block {BACKBONE_BLOCK}: weight dec"):
        check_block_training(model, optimizer, images_per_device=2)
    model, optimizer = _quick_model(*gc, "MODEL.NONLOCAL.WEIGHT_DECAY", 0.0)
    assert _no_warnings(model, optimizer, images_per_device=2) == []


def test_batch_norm_on_few_images_per_device():
    # Blocks in the backbone and, over regions rather than images, in the keypoint head.
    cfg = quick_cfg(HEAD_QUICK, "MODEL.NONLOCAL.NORM", "BN")
    model = build_model(cfg)
    optimizer = build_nonlocal_optimizer(cfg, model)
    for wrapped in (model, nn.DataParallel(model)):  # the names are the model's
        with pytest.warns(BlockTrainingWarning) as record:
            check_block_training(wrapped, optimizer, images_per_device=2)
        assert [str(w.message) for w in record] == [
            f"Context block {BACKBONE_BLOCK}: its BatchNorm out.norm normalises over 2 image(s) "
            "per device (fewer than 8), too few for reliable batch statistics. Use GN "
            "(MODEL.NONLOCAL.NORM GN; LazyConfig: norm='GN' in insert_nonlocal_blocks), or SyncBN "
            "to pool the statistics of all GPUs."
        ]
    assert _no_warnings(model, optimizer, images_per_device=8) == []


def test_hook_checks_the_trainers_model_before_training():
    model, optimizer = _quick_model("MODEL.NONLOCAL.NORM", "BN")
    hook = BlockTrainingChecks(ims_per_batch=4)
    hook.trainer = types.SimpleNamespace(model=model, optimizer=optimizer)
    with pytest.warns(BlockTrainingWarning, match=rf"{BACKBONE_BLOCK}: .* over 4 image\(s\)"):
        hook.before_train()


def test_syncbn_on_the_cpu_is_a_config_error():
    with pytest.raises(
        ValueError,
        match=r"^MODEL\.NONLOCAL\.NORM='SyncBN' is invalid with MODEL\.DEVICE='cpu': .* "
        r"Allowed on the CPU: 'GN', 'BN', ''",
    ):
        check_training_config(quick_cfg(MAIN_QUICK, "MODEL.NONLOCAL.NORM", "SyncBN"))
    syncbn = ["MODEL.NONLOCAL.NORM", "SyncBN"]
    check_training_config(quick_cfg(MAIN_QUICK, *syncbn, "MODEL.DEVICE", "cuda"))
    # GC blocks have no norm of their own.
    check_training_config(quick_cfg(MAIN_QUICK, *syncbn, "MODEL.NONLOCAL.TYPE", "gc"))
    with pytest.raises(ValueError, match=r"^MODEL\.NONLOCAL\.LR_MULTIPLIER=-1\.0 is invalid"):
        check_training_config(quick_cfg(MAIN_QUICK, "MODEL.NONLOCAL.LR_MULTIPLIER", -1.0))
