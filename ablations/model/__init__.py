"""Model parts (leaf modules take plain arguments) and the one builder that reads a config."""

from ablations.model.builder import build_model
from ablations.model.deeplab import DeepLab

__all__ = ["DeepLab", "build_model"]
