"""A sweep's output folder: finished chunks, the table, the manifest. Every file is written whole
to a temporary name and renamed into place, so a killed sweep leaves only finished files behind.

    DIR/manifest.json     the command, versions, device, seeds, the chunks and their state
    DIR/chunks/ID.csv     one finished chunk: its configurations' rows (ID: a hash of the chunk's
                          configurations, so a rerun of the same command finds them)
    DIR/results.csv       every configuration's row, in grid order (column `config`)
    DIR/results.parquet   the same table, typed (when pyarrow is installed)
    DIR/latency.npz       LLM engine: each configuration's measured requests' latencies (key: its
                          config number), for latency CDFs; chunks/ID.npz per chunk
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from jaxq._files import write_atomic

MANIFEST = "manifest.json"
TABLE = "results.csv"
PARQUET = "results.parquet"
LATENCIES = "latency.npz"


def chunk_path(out: str, chunk_id: str, suffix: str = "csv") -> str:
    return os.path.join(out, "chunks", f"{chunk_id}.{suffix}")


def write_latencies(path: str, arrays: list, keys: list | None = None):
    """Arrays of any lengths into one .npz, under keys "0", "1", ... (or `keys`)."""
    keys = range(len(arrays)) if keys is None else keys
    buffer = io.BytesIO()
    np.savez(buffer, **{str(k): a for k, a in zip(keys, arrays)})
    write_atomic(path, buffer.getvalue())


def read_latencies(path: str) -> list:
    """The arrays of write_latencies, in key order (keys are numbers)."""
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=int)]


def load_latencies(out: str) -> dict[int, np.ndarray]:
    """DIR/latency.npz as {config: latencies}."""
    with np.load(os.path.join(out, LATENCIES)) as data:
        return {int(k): data[k] for k in data.files}


def format_value(v) -> str:
    """A cell: round-trippable text (repr of floats), '' for None and NaN, JSON for lists."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def rows_to_csv(columns: list[str], rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(c)) for c in columns])
    return text.getvalue().encode()


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        columns = next(reader)
        return columns, list(reader)


def write_table(out: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """results.csv (and results.parquet if pyarrow is installed) from text rows in grid order.
    Returns the files written."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    write_atomic(os.path.join(out, TABLE), text.getvalue().encode())
    written = [TABLE]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({c: typed_column([r[i] for r in rows]) for i, c in enumerate(columns)})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(os.path.join(out, PARQUET), buffer.getvalue().to_pybytes())
    return written + [PARQUET]


def typed_column(cells: list[str]) -> list:
    """A column's cells as bool, int, float or text (the narrowest that holds them all); empty
    cells are missing values."""
    present = [c for c in cells if c != ""]
    for convert in (_bool, int, float):
        try:
            values = {c: convert(c) for c in set(present)}
        except ValueError:
            continue
        return [values[c] if c != "" else None for c in cells]
    return [c if c != "" else None for c in cells]


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(text)
    return text == "true"


def load_table(out: str) -> list[dict]:
    """results.csv as a list of typed rows {column: value}."""
    columns, rows = read_csv(os.path.join(out, TABLE))
    typed = [typed_column([r[i] for r in rows]) for i in range(len(columns))]
    return [{c: typed[i][j] for i, c in enumerate(columns)} for j in range(len(rows))]


def write_manifest(out: str, manifest: dict):
    write_atomic(os.path.join(out, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())


def read_manifest(out: str) -> dict:
    with open(os.path.join(out, MANIFEST)) as f:
        return json.load(f)
