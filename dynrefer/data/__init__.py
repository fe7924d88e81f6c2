"""Datasets generated or loaded by dynrefer: the synthetic scene benchmark (:mod:`dynrefer.data.synthetic`)."""
