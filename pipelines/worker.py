"""The local runner's worker process: Beam's SDK harness, then an exit without interpreter teardown.

In multi-processing mode the FnApiRunner starts one harness process per core and, once the pipeline
is done, closes them one after the other, waiting for each process to end. A harness holds ~3,000
modules (Beam, its GCP clients, pyarrow, numpy, scipy); freeing them at exit took ~0.7 s per
worker, so a two-worker job spent ~1.5 s of every run waiting (measured on the dedup bench). This
entry runs the same harness and, once it has returned (every bundle finished, every DoFn torn down,
its log handler flushed), ends the process at once. A harness that fails leaves the normal way,
with its traceback and a non-zero status.
"""
from __future__ import annotations

import logging
import os
import sys


def exit_now(code: int) -> None:
    """Flush logging and the standard streams, then end the process without teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _NoMainSessionWarning(logging.Filter):
    """Drops the harness's "No semi_persistent_directory found" warning, printed by every worker
    of every local run: a local worker has no staging folder and Sluice pickles no main session,
    so it says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No semi_persistent_directory found" not in record.getMessage()


def main() -> None:
    from apache_beam.runners.worker import sdk_worker_main

    logging.getLogger(sdk_worker_main.__name__).addFilter(_NoMainSessionWarning())
    sdk_worker_main.main(sys.argv)
    exit_now(0)


if __name__ == "__main__":
    main()
