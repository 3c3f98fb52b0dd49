"""Runnable Sluice jobs and the `sluice` command line."""
