"""The document table contract shared by every stage between read and tokenize."""
from __future__ import annotations

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("meta", pa.string()),  # the record's remaining fields, as JSON
        ("lang", pa.string()),  # set by the quality stage's language identification
        ("lang_score", pa.float32()),
    ]
)

# Rejected rows are documents plus why they were dropped; duplicate_of names the kept representative.
REJECTED_SCHEMA = DOC_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("duplicate_of", pa.string()))


def doc_schema(extra_fields=()) -> pa.Schema:
    """DOC_SCHEMA plus the columns a stage adds (e.g. the quality model's `quality_score`)."""
    return pa.schema([*DOC_SCHEMA, *extra_fields])


def rejected_schema(extra_fields=()) -> pa.Schema:
    return pa.schema([*DOC_SCHEMA, *extra_fields, *(REJECTED_SCHEMA.field(i) for i in range(len(DOC_SCHEMA), len(REJECTED_SCHEMA)))])


def docs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def rejected_table(docs: pa.Table, reasons: list[str], duplicate_of: list[str | None] | None = None,
                   extra_fields=()) -> pa.Table:
    if duplicate_of is None:
        duplicate_of = [None] * len(reasons)
    docs = docs.select(DOC_SCHEMA.names + [f.name for f in extra_fields])
    return docs.append_column("reason", pa.array(reasons, pa.string())).append_column(
        "duplicate_of", pa.array(duplicate_of, pa.string())
    )
