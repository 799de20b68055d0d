# CPU-sized NL Mask R-CNN as a LazyConfig, on the built-in generated data (nl_shapes): detectron2's
# COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py with one NL block before the last unit of
# res4, shrunk as mask_rcnn_nl_R18_kp_quick.yaml is (R-18 from scratch with GroupNorm, 160 px
# images, thin heads; no keypoint head). 600 iterations of about 0.6 s on one CPU core; from the
# repository root:
#   python tools/lazyconfig_train_net.py \
#     --config-file configs/quick_schedules/mask_rcnn_nl_R18_quick.py
from fvcore.common.param_scheduler import MultiStepParamScheduler

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler

from ..common.nonlocal_zoo import nonlocal_zoo_config

dataloader, lr_multiplier, model, optimizer, train = nonlocal_zoo_config(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    norm="GN",  # batch statistics of 2 images are too noisy for BN
)

# R-18 trained from scratch: GroupNorm (FrozenBN from scratch diverges), nothing frozen.
# (a name without "_" would become an entry of the config)
_resnet = model.backbone.module.bottom_up
_resnet.stem.norm = _resnet.stages.norm = model.backbone.module.norm = "GN"
_resnet.stages.depth = 18
_resnet.stages.pop("stride_in_1x1")  # R-18/34's BasicBlock has a single 3x3 conv per branch
_resnet.freeze_at = 0
model.pixel_std = [57.375, 57.120, 58.395]  # torchvision-style std for a network from scratch

# 64-channel pyramid, thin heads, 5 classes (person, ellipse, triangle, rectangle, star).
FPN_CHANNELS = 64
model.backbone.module.out_channels = FPN_CHANNELS
model.proposal_generator.head.in_channels = FPN_CHANNELS
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (256, 200)
model.roi_heads.num_classes = 5
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, height=7, width=7)
model.roi_heads.box_head.fc_dims = [128, 128]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)
model.roi_heads.box_predictor.test_topk_per_image = 20  # at most 4 objects per image
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [64, 64, 64]  # two convs, then the deconv
model.roi_heads.mask_head.conv_norm = "GN"

IMAGE_SIZE = 160
dataloader.train.dataset.names = "nl_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "nl_shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
]
dataloader.test.num_workers = 1

train.init_checkpoint = ""
train.device = "cpu"
train.max_iter = 600
train.eval_period = 600
train.checkpointer.period = 200
train.seed = 42
train.output_dir = "./output/mask_rcnn_nl_R18_quick"
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[480, 560], num_updates=train.max_iter
    ),
    warmup_length=50 / train.max_iter,
    warmup_factor=0.001,
)
