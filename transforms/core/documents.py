"""The document schema and the Arrow record batches that carry documents through Beam.

A document is one row with `id` (string, stable), `text`, `source` (the domain used for mixing),
`url` (nullable) and every other input field kept as-is. Stages move documents as
`pyarrow.RecordBatch` elements of a few hundred to a few thousand rows, because Beam's per-element
cost (~60 us) would dominate per-document work on single records.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa
import xxhash

ID, TEXT, SOURCE, URL = "id", "text", "source", "url"
CORE_FIELDS = (ID, TEXT, SOURCE, URL)


def content_id(text: str) -> str:
    """A stable id derived from the text: 128-bit xxh3, hex."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


def _column(values: list) -> pa.Array:
    """Infer an Arrow column; values whose types cannot share one column are kept as JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values],
                        type=pa.large_string())


def batch_from_rows(rows: list[dict]) -> pa.RecordBatch:
    """Rows (dicts) to a record batch; columns in order of first appearance, core fields first."""
    names: dict[str, None] = dict.fromkeys(f for f in CORE_FIELDS if rows and f in rows[0])
    for row in rows:
        names.update(dict.fromkeys(row))
    return pa.RecordBatch.from_arrays([_column([r.get(n) for r in rows]) for n in names],
                                      names=list(names))


def rows(batch: pa.RecordBatch) -> list[dict]:
    return batch.to_pylist()


def with_column(batch: pa.RecordBatch, name: str, values: Any) -> pa.RecordBatch:
    """Add or replace one column, keeping every other column untouched."""
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    index = batch.schema.get_field_index(name)
    if index >= 0:
        return batch.set_column(index, name, array)
    return batch.append_column(name, array)


def concat(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """Concatenate batches whose schemas may differ (missing columns become nulls)."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return pa.table({})
    schema = unify([b.schema for b in batches])
    return pa.Table.from_batches([conform(b, schema) for b in batches], schema=schema)


# --- schema unification -------------------------------------------------------------------------
# Inputs from different files infer different types for the same field (null vs string, int vs
# double, two struct layouts). Shards of one output must share one schema, so the sink unifies the
# schemas of all batches first and conforms each batch to it. A field whose types cannot be
# promoted falls back to JSON text, rather than failing the run.

def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    result: pa.Schema | None = None
    for schema in schemas:
        result = schema if result is None else _unify_pair(result, schema)
    return result if result is not None else pa.schema([])


def _unify_pair(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    try:
        return pa.unify_schemas([a, b], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        pass
    fields = {f.name: f for f in a}
    for field in b:
        if field.name not in fields:
            fields[field.name] = field
            continue
        try:
            fields[field.name] = pa.unify_schemas(
                [pa.schema([fields[field.name]]), pa.schema([field])],
                promote_options="permissive").field(0)
        except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
            fields[field.name] = pa.field(field.name, pa.large_string())
    return pa.schema(list(fields.values()))


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to `schema`: missing columns become nulls, unpromotable ones JSON text."""
    if batch.schema.equals(schema):
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        if column.type.equals(field.type):
            columns.append(column)
            continue
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            if not pa.types.is_string(field.type) and not pa.types.is_large_string(field.type):
                raise
            columns.append(pa.array([None if v is None else json.dumps(v, default=str)
                                     for v in column.to_pylist()], type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
