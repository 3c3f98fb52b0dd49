"""Decontamination against evaluation sets: the `decontaminate` stage (docs/decontamination.md)."""
