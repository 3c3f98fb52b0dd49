"""Reusable Sluice PTransforms and DoFns: ingest, stages, sinks, accounting."""
