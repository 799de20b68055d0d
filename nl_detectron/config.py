# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
from detectron2.config import CfgNode as CN


def add_nonlocal_config(cfg):
    """
    Add the config node ``MODEL.NONLOCAL`` for non-local context blocks to ``cfg`` (in place).

    The defaults reproduce the detection setting of Wang et al. (CVPR 2018): one embedded-Gaussian
    non-local block right before the last residual unit of res4. Calling it again on a config that
    already has the node is a no-op, so values merged in between are kept.
    """
    if "NONLOCAL" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.NONLOCAL = CN()
    # The registered backbone builder that MODEL.BACKBONE.NAME "build_nonlocal_backbone" calls; the
    # blocks go into the detectron2 ResNet inside its backbone. Any builder of a ResNet-based
    # backbone: "build_resnet_fpn_backbone", "build_resnet_backbone" (C4, DC5),
    # "build_retinanet_resnet_fpn_backbone", ... A stock config switches on by moving its
    # MODEL.BACKBONE.NAME here.
    _C.MODEL.NONLOCAL.BACKBONE = "build_resnet_fpn_backbone"
    # Block type: "nl" (non-local, Wang et al. 2018), "dnl" (disentangled non-local, Yin et al.
    # 2020), "snl" (spectral non-local, Zhu et al. 2021) or "gc" (global context, Cao et al. 2019).
    _C.MODEL.NONLOCAL.TYPE = "nl"
    # Pairwise function of TYPE "nl": "gaussian", "embedded_gaussian", "dot_product" or
    # "concatenation".
    _C.MODEL.NONLOCAL.INSTANTIATION = "embedded_gaussian"
    # ResNet stages that get blocks, any of "res2" .. "res5" the backbone builds (a C4 backbone
    # stops at res4). Empty: no block in the backbone (e.g. blocks only in the keypoint head).
    _C.MODEL.NONLOCAL.STAGES = ["res4"]
    # One list per entry of STAGES: the index of the residual unit each block is inserted before;
    # 0 is the stage's first unit and negative indices count from the end (-1: before the last).
    # The paper's 5-block setting: STAGES ["res3", "res4"], POSITIONS [[1, 3], [1, 3, 5]].
    _C.MODEL.NONLOCAL.POSITIONS = [[-1]]
    # Embedding width of "nl", "dnl" and "snl": inter channels = in channels // REDUCTION
    # (the paper halves the channels).
    _C.MODEL.NONLOCAL.REDUCTION = 2
    # Max-pool keys and values by 2 per spatial dimension ("nl" and "dnl"): 4x fewer pairs.
    _C.MODEL.NONLOCAL.SUB_SAMPLE = False
    # Divide dot-product affinities by sqrt(inter channels) ("nl" and "dnl").
    _C.MODEL.NONLOCAL.USE_SCALE = True
    # Normalization after the block's output projection: "", "BN", "SyncBN", "GN" or "FrozenBN"
    # ("": none). Independent of MODEL.RESNETS.NORM, so the blocks train in a FrozenBN backbone.
    # Not used by "gc", whose transform has its own LayerNorm.
    _C.MODEL.NONLOCAL.NORM = "BN"
    # Zero-initialise the block's last layer so that every block is the identity at init and a
    # pretrained network keeps its outputs.
    _C.MODEL.NONLOCAL.ZERO_INIT = True
    # Most MiB one "nl" or "dnl" block's pairwise aggregation may hold at its peak: its N x M
    # affinity (whole or in query chunks) plus its per-position operands and gradients; it picks
    # the block's computation path (see nl_detectron.layers.attention_policy). None: the device's
    # default (CPU 512 MiB, which keeps res4's affinity at batch 2; CUDA 1/16 of the card's memory).
    _C.MODEL.NONLOCAL.AFFINITY_BUDGET_MB = None
    # Run the pairwise aggregation of "nl" (all instantiations but dot_product) and "dnl" blocks
    # in nl_detectron's Triton kernels on CUDA: nothing N x M stored, AFFINITY_BUDGET_MB unused.
    # Opt-in: correct on every test, not yet timed on a GPU (docs/attention_paths.md).
    _C.MODEL.NONLOCAL.USE_TRITON = False
    # Iterations between records of the blocks' health during training (tools/train_net.py's
    # BlockHealthMonitor: gate, share, entropy, diversity, path into metrics.json), on the
    # iterations detectron2's writers log (every 20); 0 = off. At 20 it costs under 0.1% of an
    # iteration (docs/tools.md).
    _C.MODEL.NONLOCAL.MONITOR_PERIOD = 20
    # Softmax temperature of the disentangled pairwise term ("dnl").
    _C.MODEL.NONLOCAL.DNL_TEMPERATURE = 0.05
    # Number of terms of the spectral graph filter, >= 2 ("snl").
    _C.MODEL.NONLOCAL.SNL_ORDER = 2
    # Bottleneck ratio of the transform ("gc"): hidden channels = in channels * GC_RATIO.
    _C.MODEL.NONLOCAL.GC_RATIO = 1.0 / 16
    # Context pooling ("gc"): "attention" (softmax-weighted sum) or "avg".
    _C.MODEL.NONLOCAL.GC_POOLING = "attention"
    # How the context is fused into every position ("gc"): "channel_add" and/or "channel_mul".
    _C.MODEL.NONLOCAL.GC_FUSIONS = ["channel_add"]
    # 1-based indices of the convs of NonLocalKRCNNConvDeconvUpsampleHead after which a block is
    # inserted (same block settings as above); the paper puts 4 in the 8-conv head, one every 2.
    _C.MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS = [2, 4, 6, 8]
    # Learning-rate factor of every parameter of the blocks (backbone and keypoint head): they
    # train at SOLVER.BASE_LR times it, times detectron2's own factors (SOLVER.BIAS_LR_FACTOR for
    # biases). Read by tools/train_net.py's optimizer (nl_detectron.engine).
    _C.MODEL.NONLOCAL.LR_MULTIPLIER = 1.0
    # Weight decay of the blocks' parameters. None: the solver's rules (SOLVER.WEIGHT_DECAY,
    # SOLVER.WEIGHT_DECAY_NORM for norm parameters, SOLVER.WEIGHT_DECAY_BIAS for biases). A
    # number: that decay for every parameter of the blocks, the scale of the norm that gates
    # each block included (decay pulls that zero-initialised gate back towards 0, shut).
    _C.MODEL.NONLOCAL.WEIGHT_DECAY = None
