"""DuST: Dual Swin Transformer for multimodal video and time-series clip classification."""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":  # imported lazily: `import dust` stays light
        from .predict import Predictor

        return Predictor
    raise AttributeError(f"module 'dust' has no attribute {name!r}")
