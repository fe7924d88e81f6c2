"""Evaluators for every reported table (SPEC §6): captioning, dense captioning, OVAD, recognition."""
