# detectron2's new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py (from scratch, SyncBN, large-scale
# jitter, 200 epochs) with one NL block before the last unit of res4, normalised with SyncBN
# like the rest of that model.
from .common.nonlocal_zoo import nonlocal_zoo_config

dataloader, lr_multiplier, model, optimizer, train = nonlocal_zoo_config(
    "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py", norm="SyncBN"
)
