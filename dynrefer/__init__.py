"""dynrefer: region-level vision-language understanding with dynamic-resolution multi-view crops."""

__version__ = "0.1.0"
