#!/usr/bin/env python
"""
nl_detectron's LazyConfig training script: detectron2's ``tools/lazyconfig_train_net.py`` flow
with the built-in datasets, COCO evaluation through FastCOCOEvaluator and CPU training.

It runs the Python configs of ``configs/`` (and detectron2's own): the config's ``model``,
``dataloader``, ``optimizer``, ``lr_multiplier`` and ``train`` entries, with ``key=value``
overrides after the options. The command line is detectron2's (``--config-file``, ``--eval-only``,
``--resume``, ``--num-gpus``, ...). With ``train.device=cpu``, ``--num-gpus N`` starts N CPU
processes that train with GLOO.

Examples:
    # CPU, built-in data (600 iterations of about 0.6 s on one core):
    python tools/lazyconfig_train_net.py \\
        --config-file configs/quick_schedules/mask_rcnn_nl_R18_quick.py
    # COCO, 8 GPUs, from scratch with large-scale jitter:
    python tools/lazyconfig_train_net.py \\
        --config-file configs/mask_rcnn_nl_R50_FPN_100ep_LSJ.py --num-gpus 8
    # Evaluate a trained model:
    python tools/lazyconfig_train_net.py --config-file CONFIG --eval-only \\
        train.init_checkpoint=output/model_final.pth
"""

import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from nl_detectron.data import missing_datasets, prepare_datasets
from nl_detectron.engine import BlockHealthMonitor, BlockTrainingChecks
from nl_detectron.engine.block_health import DEFAULT_PERIOD
from nl_detectron.evaluation import FastCOCOEvaluator
from nl_detectron.modeling.build import check_monitor_period

logger = logging.getLogger("nl_detectron")


def _names(dataset_cfg):
    names = dataset_cfg.names
    return [names] if isinstance(names, str) else list(names)


def build_evaluator(cfg):
    """The config's evaluator; detectron2's COCOEvaluator is replaced by FastCOCOEvaluator."""
    evaluator = cfg.dataloader.evaluator
    target = evaluator._target_
    target = locate(target) if isinstance(target, str) else target
    names = _names(cfg.dataloader.test.dataset)
    if isinstance(target, type) and issubclass(target, COCOEvaluator):
        evaluator._target_ = FastCOCOEvaluator  # same arguments
        # A dataset's own keypoints have their OKS sigmas in its metadata; without them the
        # evaluator would assume COCO's 17 person keypoints.
        sigmas = MetadataCatalog.get(names[0]).get("keypoint_oks_sigmas", ())
        if "kpt_oks_sigmas" not in evaluator and sigmas:
            evaluator.kpt_oks_sigmas = list(sigmas)
    # The evaluator reads the annotation file at once; generated data may not be drawn yet.
    prepare_datasets(names)
    return instantiate(evaluator)


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), build_evaluator(cfg))
    print_csv_format(results)
    return results


def _ddp(cfg, model):
    # DistributedDataParallel takes no device_ids for a CPU module.
    device_ids = None if cfg.train.device == "cpu" else [comm.get_local_rank()]
    return create_ddp_model(model, device_ids=device_ids, **cfg.train.ddp)


def do_train(args, cfg):
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = _ddp(cfg, model)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    # Iterations between block-health records (docs/tools.md); 0 = off.
    health_period = check_monitor_period(
        cfg.train.get("block_health_period", DEFAULT_PERIOD), "train.block_health_period"
    )
    trainer.register_hooks(
        [
            BlockTrainingChecks(cfg.dataloader.train.total_batch_size),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if main_process
            else None,
            # Before the hooks that run forward passes or write: see tools/train_net.py.
            BlockHealthMonitor(model, health_period) if health_period else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main_process
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def load_config(args):
    """The config of ``args`` (file, then ``key=value`` overrides), without any side effect."""
    cfg = LazyConfig.load(args.config_file)
    return LazyConfig.apply_overrides(cfg, args.opts)


def check_datasets(cfg, config_file):
    """Stops with a message naming what is missing, if a dataset's files are not there."""
    names = [_names(cfg.dataloader.train.dataset)] if "train" in cfg.dataloader else []
    names += [_names(cfg.dataloader.test.dataset)] if "test" in cfg.dataloader else []
    problems = missing_datasets([n for group in names for n in group])
    if problems:
        sys.exit(
            f"Cannot run {config_file}: its datasets are not available.\n  "
            + "\n  ".join(problems)
            + "\nCOCO must be in detectron2's layout under $DETECTRON2_DATASETS; the built-in "
            "data runs anywhere: --config-file configs/quick_schedules/mask_rcnn_nl_R18_quick.py"
        )


def main(args):
    cfg = load_config(args)
    default_setup(cfg, args)
    # Also log this package's messages (e.g. where the context blocks were inserted).
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="nl_detectron")

    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = _ddp(cfg, model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(args, cfg)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    # One message about missing data before any process starts, rather than one per process.
    check_datasets(load_config(args), args.config_file)
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
