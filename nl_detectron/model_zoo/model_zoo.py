# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
import os

from detectron2.config import LazyConfig, get_cfg

from ..config import add_nonlocal_config

# An installed package carries the configs as package data (setup.py maps the repository's
# configs/ here); a source checkout reads configs/ at the repository root.
_PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_CHECKOUT_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)
CONFIG_EXTENSIONS = (".yaml", ".py")


def configs_root():
    """The directory that holds the configs: the installed package data, else the checkout's."""
    for root in (_PACKAGED_CONFIGS, _CHECKOUT_CONFIGS):
        if os.path.isdir(root):
            return root
    raise RuntimeError(
        f"nl_detectron's configs are neither installed ({_PACKAGED_CONFIGS}) nor in a source "
        f"checkout ({_CHECKOUT_CONFIGS}); reinstall nl_detectron from its wheel or repository."
    )


def _complete_configs(root):
    """Paths relative to ``root`` of the configs that define a whole model and its schedule: every
    config except ``Base-*`` files and the shared parts under ``common/``."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("common", "__pycache__"))
        for name in sorted(files):
            if name.endswith(CONFIG_EXTENSIONS) and not name.startswith(("Base-", "__init__")):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return found


def get_config_file(config_path):
    """
    Returns the path of a config shipped with nl_detectron.

    Args:
        config_path (str): path relative to the repository's ``configs/`` directory, e.g.
            ``"mask_rcnn_nl_R50.yaml"`` or ``"quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml"``.

    Returns:
        str: the absolute path of the file.
    """
    root = configs_root()
    path = os.path.normpath(os.path.join(root, config_path))
    if (
        os.path.isabs(config_path)
        or not path.startswith(root + os.sep)
        or not path.endswith(CONFIG_EXTENSIONS)
        or not os.path.isfile(path)
    ):
        available = "\n  ".join(_complete_configs(root))
        raise RuntimeError(
            f"{config_path!r} is not a config of nl_detectron.model_zoo. Paths are relative to "
            f"{root} and end in {' or '.join(CONFIG_EXTENSIONS)}; the complete configs are:\n  "
            f"{available}"
        )
    return path


def get_config(config_path):
    """
    Returns the config of a model shipped with nl_detectron.

    Args:
        config_path (str): see :func:`get_config_file`.

    Returns:
        CfgNode (for ``.yaml``, with ``MODEL.NONLOCAL``; merge further options into it) or
        omegaconf.DictConfig (for a LazyConfig ``.py``; instantiate with
        ``detectron2.config.instantiate``).
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(path)
    return cfg
