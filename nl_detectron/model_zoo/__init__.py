"""The configs shipped with nl_detectron, by their path relative to ``configs/`` (as in
``detectron2.model_zoo``)."""

from .model_zoo import get_config, get_config_file

__all__ = ["get_config", "get_config_file"]
