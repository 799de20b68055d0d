#!/usr/bin/env python
"""
nl_detectron training script: detectron2's ``tools/train_net.py`` plus the ``MODEL.NONLOCAL``
config node, the built-in datasets and COCO evaluation through faster-coco-eval.

The command line is detectron2's (``--config-file``, ``--eval-only``, ``--resume``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, then ``KEY VALUE`` opts).
Without a GPU, ``--num-gpus N`` starts N CPU processes that train with GLOO.

Examples:
    # CPU, built-in data, a few minutes:
    python tools/train_net.py --config-file configs/quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml
    # COCO (see README "Training on COCO"), 8 GPUs:
    python tools/train_net.py --config-file configs/mask_rcnn_nl_R50.yaml --num-gpus 8
"""

import contextlib
import functools
import os
import sys

import detectron2.engine.defaults as d2_defaults
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import (
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    hooks,
    launch,
)
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from nl_detectron import add_nonlocal_config
from nl_detectron.data import missing_datasets, prepare_datasets
from nl_detectron.engine import (
    BlockHealthMonitor,
    BlockTrainingChecks,
    build_nonlocal_optimizer,
    check_training_config,
)
from nl_detectron.evaluation import FastCOCOEvaluator
from nl_detectron.modeling.build import check_monitor_period

# The config that runs anywhere: it trains on the generated nl_shapes dataset.
BUILTIN_DATA_CONFIG = "configs/quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml"


@contextlib.contextmanager
def _cpu_ddp():
    """Makes DefaultTrainer wrap a CPU model in DDP with ``device_ids=None``.

    detectron2's ``create_ddp_model`` passes ``device_ids=[local rank]``, which
    DistributedDataParallel rejects for CPU modules. The patch lives only while a trainer is built.
    """
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(original, device_ids=None)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        cpu_ddp = cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1
        with _cpu_ddp() if cpu_ddp else contextlib.nullcontext():
            super().__init__(cfg)
        # Warns once, before the first iteration, about blocks that will not train as intended.
        self.register_hooks([BlockTrainingChecks(self.cfg.SOLVER.IMS_PER_BATCH)])

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, with MODEL.NONLOCAL.LR_MULTIPLIER and WEIGHT_DECAY for the blocks."""
        return build_nonlocal_optimizer(cfg, model)

    def build_hooks(self):
        """detectron2's hooks and, with MODEL.NONLOCAL.MONITOR_PERIOD > 0, the block-health
        monitor before the first hook that runs forward passes or writes (PreciseBN, EvalHook,
        PeriodicWriter): it stops recording before they run, and the writer writes its values
        the same iteration."""
        ret = super().build_hooks()
        period = check_monitor_period(self.cfg.MODEL.NONLOCAL.MONITOR_PERIOD)
        if period:
            later = (hooks.PreciseBN, hooks.EvalHook, hooks.PeriodicWriter)
            index = next((i for i, h in enumerate(ret) if isinstance(h, later)), len(ret))
            ret.insert(index, BlockHealthMonitor(self.model, period))
        return ret

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        # The evaluator reads the annotation file at once; generated data may not be drawn yet.
        prepare_datasets([dataset_name])
        # The tasks (box, mask, keypoints) follow from the predictions; the OKS sigmas come from
        # the config, else from the dataset's metadata (COCOEvaluator would assume COCO's 17).
        sigmas = cfg.TEST.KEYPOINT_OKS_SIGMAS or MetadataCatalog.get(dataset_name).get(
            "keypoint_oks_sigmas", ()
        )
        return FastCOCOEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder,
            kpt_oks_sigmas=sigmas,
        )


def load_config(args):
    """The config of ``args`` (file, then opts), without any side effect."""
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return cfg


def check_datasets(cfg, config_file):
    """Stops with a message that says where the data must be, if a dataset's files are missing."""
    problems = missing_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if not problems:
        return
    root = os.environ.get("DETECTRON2_DATASETS", "datasets (relative to the current folder)")
    sys.exit(
        f"Cannot run {config_file}: its datasets are not available.\n  "
        + "\n  ".join(problems)
        + "\nCOCO must be in detectron2's layout under $DETECTRON2_DATASETS (now: "
        + root
        + "): coco/annotations/instances_{train,val}2017.json (and person_keypoints_*2017.json "
        "for keypoint configs) with the images in coco/train2017/ and coco/val2017/.\n"
        f"Without COCO, the built-in generated data runs on any machine:\n"
        f"  python tools/train_net.py --config-file {BUILTIN_DATA_CONFIG}"
    )


def setup(args):
    """
    Create configs and perform basic setups.
    """
    cfg = load_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    # Also log this package's messages (inserted blocks, block health).
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nl_detectron")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    # Checked before any process starts, so a bad setting or a missing dataset gives one message,
    # not N tracebacks.
    cfg = load_config(args)
    if not args.eval_only:
        check_training_config(cfg)
    check_datasets(cfg, args.config_file)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
