# Wang et al. (2018), Table 5 as a LazyConfig: detectron2's
# COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py (ImageNet R-50, FrozenBN, 1x) with one NL
# block before the last unit of res4; the same model as mask_rcnn_nl_R50.yaml.
from .common.nonlocal_zoo import nonlocal_zoo_config

dataloader, lr_multiplier, model, optimizer, train = nonlocal_zoo_config(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
