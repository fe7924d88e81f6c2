"""dynrefer: region-level vision-language understanding with dynamic-resolution multi-view crops.

``dynrefer.DynRefer`` and ``dynrefer.DynReferConfig`` are imported lazily (the command line
and the data tools do not pay for importing transformers).
"""

__version__ = "0.1.0"
__all__ = ["DynRefer", "DynReferConfig", "describe", "__version__"]


def __getattr__(name):
    if name == "DynRefer":
        from .model.dynrefer import DynRefer

        return DynRefer
    if name == "DynReferConfig":
        from .model.config import DynReferConfig

        return DynReferConfig
    if name == "describe":
        from .inference.predictor import describe

        return describe
    raise AttributeError(f"module 'dynrefer' has no attribute {name!r}")
