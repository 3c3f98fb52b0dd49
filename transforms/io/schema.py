"""The columns an input carries, read from a sample before the job runs.

The chain check (`transforms.core.stage.check_chain`) needs the fields a stage may read from the
input itself (a `label` or `quality_score` column in JSONL, say). Parquet and Arrow files say it
in their schema; JSONL, WARC and WET records are sampled: the first records of the first files
of each input glob, mapped to documents exactly as ingest maps them.
"""
from __future__ import annotations

import itertools
from typing import Optional

from transforms.io.ingest import (READERS, Failure, InputSpec, expand_inputs, format_of,
                                  source_from_path, to_document)

FILES_PER_INPUT = 4
RECORDS_PER_FILE = 200
DEEP_RECORDS_PER_FILE = 100_000  # JSONL, before a column is called missing (it has no schema)


def input_fields(specs: list[InputSpec],
                 records_per_file: int = RECORDS_PER_FILE) -> Optional[set[str]]:
    """Every document field seen in a sample of each input (raises ConfigError for an input
    glob that matches no file, as the job would); None when no sampled file gave a readable
    document, so the check does not report columns as missing from input it could not read (the
    run reports the unreadable records)."""
    fields: set[str] = set()
    readable = False
    seen: dict[int, int] = {}
    for index, path, _size in expand_inputs(specs):
        if seen.get(index, 0) >= FILES_PER_INPUT:
            continue
        seen[index] = seen.get(index, 0) + 1
        spec = specs[index]
        file_format = format_of(spec, path)
        records = READERS[file_format](path)
        # only JSONL records differ in their fields: the other formats show them all at once
        limit = records_per_file if file_format == "jsonl" else RECORDS_PER_FILE
        try:
            for record in itertools.islice(records, limit):
                if isinstance(record, Failure):
                    continue
                doc = to_document(dict(record), spec, source_from_path(path))
                if not isinstance(doc, Failure):
                    fields.update(doc)
                    readable = True
        except Exception:  # an unreadable file is ingest's to report, with its records counted
            continue
        finally:
            close = getattr(records, "close", None)
            if close:
                close()
    return fields if readable else None
