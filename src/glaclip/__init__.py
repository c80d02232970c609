"""glaclip: training-free open-vocabulary semantic segmentation with GLA-CLIP."""

__version__ = "0.1.0"
