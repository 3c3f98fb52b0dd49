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


# A field whose values cannot share one Arrow type (a string in one document, a number or an
# object in another) is stored as JSON text: a `large_string` field marked with JSON_METADATA,
# every value its JSON text, strings included ("one" is stored as `"one"`), so a value does not
# depend on which documents shared its batch. Integers outside int64 are kept exactly as their
# decimal string (never as float).
JSON_METADATA = {b"sluice.encoding": b"json"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SAFE_FLOAT_INT = 2**53


def json_field(name: str) -> pa.Field:
    """The field of a mixed-type column: JSON text of each value."""
    return pa.field(name, pa.large_string(), metadata=JSON_METADATA)


def is_json_field(field: pa.Field) -> bool:
    return pa.types.is_large_string(field.type) and bool(field.metadata) \
        and field.metadata.get(b"sluice.encoding") == b"json"


def _canonical(value: Any) -> Any:
    """A value as Arrow can give it back from any column it may have been stored in: object
    members sorted by name (`json_text`) with null members left out (a struct column cannot tell
    a null member from a missing one), and an integral float within 2**53 as an int (an int
    column promoted to float64 in another batch)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _SAFE_FLOAT_INT:
        return int(value)
    return value


def json_text(value: Any) -> str | None:
    """The JSON text a mixed-type column stores for `value` (None stays null)."""
    if value is None:
        return None
    if isinstance(value, (dict, list, tuple, float)):
        value = _canonical(value)
    return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)


def _json_column(values: list) -> pa.Array:
    return pa.array([json_text(v) for v in values], type=pa.large_string())


def _is_big_int(value: Any) -> bool:
    return type(value) is int and not INT64_MIN <= value <= INT64_MAX


def _has_float(type_: pa.DataType) -> bool:
    if pa.types.is_floating(type_):
        return True
    if pa.types.is_struct(type_):
        return any(_has_float(type_.field(i).type) for i in range(type_.num_fields))
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _has_float(type_.value_type)
    return False


def _bool_as_float(values: list, type_: pa.DataType) -> bool:
    """Whether inference turned a bool into a float: Arrow reads [2.5, True] as doubles but
    [True, 2.5] as an error, so the stored value would depend on the order within the batch.
    Only the float parts of the type are walked."""
    if pa.types.is_floating(type_):
        return any(v is True or v is False for v in values)
    if pa.types.is_struct(type_):
        dicts = [v for v in values if isinstance(v, dict)]
        return any(_bool_as_float([d.get(f.name) for d in dicts], f.type)
                   for f in (type_.field(i) for i in range(type_.num_fields)) if _has_float(f.type))
    if (pa.types.is_list(type_) or pa.types.is_large_list(type_)) and _has_float(type_.value_type):
        return _bool_as_float([x for v in values if isinstance(v, (list, tuple)) for x in v],
                              type_.value_type)
    return False


def _ints_as_floats(values: list, type_: pa.DataType) -> list:
    """`values` with the ints on the float parts of `type_` made floats (rounded as a cast from
    int64 rounds them in `conform`)."""
    if pa.types.is_floating(type_):
        return [float(v) if type(v) is int else v for v in values]
    if pa.types.is_struct(type_):
        values = [dict(v) if isinstance(v, dict) else v for v in values]
        for field in (type_.field(i) for i in range(type_.num_fields)):
            if _has_float(field.type):
                dicts = [v for v in values if isinstance(v, dict) and field.name in v]
                for d, x in zip(dicts, _ints_as_floats([d[field.name] for d in dicts], field.type)):
                    d[field.name] = x
        return values
    if (pa.types.is_list(type_) or pa.types.is_large_list(type_)) and _has_float(type_.value_type):
        flat = iter(_ints_as_floats([x for v in values if isinstance(v, (list, tuple)) for x in v],
                                    type_.value_type))
        return [[next(flat) for _ in v] if isinstance(v, (list, tuple)) else v for v in values]
    return values


def _infer(values: list) -> pa.Array | None:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        if "exactly representable" not in str(exc):
            return None
        # an int beyond 2**53 beside floats: float64, as two batches unify to
        try:
            type_ = pa.infer_type(values)
            array = pa.array(_ints_as_floats(values, type_), type=type_)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return None
    if _has_float(array.type) and _bool_as_float(values, array.type):
        return None
    return array


def _column(values: list) -> tuple[pa.Array, bool]:
    """Infer an Arrow column -> (array, is JSON text). Integers outside int64 become their
    decimal string; values whose types cannot share one column are kept as JSON text."""
    array = _infer(values)
    if array is None and any(_is_big_int(v) for v in values):
        values = [str(v) if _is_big_int(v) else v for v in values]
        array = _infer(values)
    return (array, False) if array is not None else (_json_column(values), True)


def batch_from_rows(rows: list[dict]) -> pa.RecordBatch:
    """Rows (dicts) to a record batch; columns in order of first appearance, core fields first."""
    names: dict[str, None] = dict.fromkeys(f for f in CORE_FIELDS if rows and f in rows[0])
    for row in rows:
        names.update(dict.fromkeys(row))
    fields, arrays = [], []
    for name in names:
        array, is_json = _column([r.get(name) for r in rows])
        fields.append(json_field(name) if is_json else pa.field(name, array.type))
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


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
# promoted becomes a JSON text field (`json_field`) rather than failing the run, and conforming
# to it writes every value as `json_text`, so the result is the one a single batch holding every
# document would give, whatever the batching.

def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    result: pa.Schema | None = None
    for schema in schemas:
        result = schema if result is None else _unify_pair(result, schema)
    return result if result is not None else pa.schema([])


_MERGE_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError)


def _unify_pair(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    if a.equals(b, check_metadata=True):
        return a
    if not any(map(is_json_field, a)) and not any(map(is_json_field, b)):
        try:
            return pa.unify_schemas([a, b], promote_options="permissive")
        except _MERGE_ERRORS:
            pass
    fields = {f.name: f for f in a}
    for field in b:
        mine = fields.get(field.name)
        fields[field.name] = field if mine is None else _unify_field(mine, field)
    return pa.schema(list(fields.values()))


def _unify_field(a: pa.Field, b: pa.Field) -> pa.Field:
    if is_json_field(a) or is_json_field(b):
        return json_field(a.name)
    try:
        return pa.unify_schemas([pa.schema([a]), pa.schema([b])],
                                promote_options="permissive").field(0)
    except _MERGE_ERRORS:
        return json_field(a.name)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to `schema`: missing columns become nulls; a column conformed to a JSON text
    field (`json_field`) has each value written as `json_text`."""
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        if is_json_field(field):
            columns.append(column if is_json_field(batch.schema.field(index))
                           else _json_column(column.to_pylist()))
            continue
        if column.type.equals(field.type):
            columns.append(column)
            continue
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            if _has_float(field.type):
                # an int beyond 2**53 where another batch had floats: rounded, as inference
                # rounds it in a batch that also holds floats
                columns.append(column.cast(field.type, safe=False))
                continue
            if not pa.types.is_string(field.type) and not pa.types.is_large_string(field.type):
                raise
            columns.append(_json_column(column.to_pylist()).cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
