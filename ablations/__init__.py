"""Ablation harness for DeepLab-family semantic segmentation.

>>> import ablations
>>> config = ablations.load_config(overrides=["backbone.output_stride=8", "backbone.multi_grid=1,2,4"])
>>> model = ablations.build_model(config)
"""

from ablations.config import ConfigError, ExperimentConfig, load_config
from ablations.model import build_model

__all__ = ["ConfigError", "ExperimentConfig", "build_model", "load_config"]
__version__ = "0.1.0"
