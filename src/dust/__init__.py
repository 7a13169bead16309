"""DuST: Dual Swin Transformer for multimodal video and time-series clip classification."""

__version__ = "0.1.0"
