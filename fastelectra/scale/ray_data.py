"""Embed a corpus with Ray Data: texts in (a text file or Parquet), Parquet with embeddings out.

    >>> embed_corpus("bundles/minilm", "corpus.txt", "vectors.parquet", replicas=4)
    120000

The texts are cut into blocks of `batch_size` rows; a pool of `replicas` actors, each holding
one `Encoder` loaded once, embeds them (`map_batches`). Rows come back in input order and are
streamed into a single Parquet file by the driver, so the output lines up with the input row
for row and is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastelectra.destinations import FileKind, check_file, starts_with
from fastelectra.errors import InputError
from fastelectra.runtime.encoder import POOLINGS
from fastelectra.runtime.lines import read_line_chunks

if TYPE_CHECKING:
    import ray.data

EMBEDDING_COLUMN = "embedding"
PARQUET_SUFFIXES = (".parquet", ".pq")
# Parquet files begin (and end) with these four bytes.
PARQUET = FileKind("a Parquet file", lambda path: starts_with(path, b"PAR1"))
# Lines per object a text file is put into Ray as: enough that per-object overhead does not
# matter, few enough that the driver holds little of the file at a time. The pipeline cuts
# them into batch_size rows for the actors.
TEXT_BLOCK_ROWS = 8192


class EmbedTexts:
    """The Ray Data actor: loads the bundle once, then embeds one block of rows per call."""

    def __init__(
        self,
        bundle: str,
        *,
        text_column: str,
        pooling: str | None,
        normalize: bool,
        batch_size: int,
        threads: int,
        providers: str | None,
    ) -> None:
        from fastelectra.runtime import Encoder

        self._encoder = Encoder.load(bundle, providers=providers, threads=threads)
        self._text_column = text_column
        self._pooling = pooling
        self._normalize = normalize
        self._batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self._text_column).to_pylist()
        vectors = self._encoder.embed(
            texts, pooling=self._pooling, normalize=self._normalize, batch_size=self._batch_size
        )
        return batch.append_column(EMBEDDING_COLUMN, embedding_array(vectors))


def embedding_array(vectors: np.ndarray) -> pa.ListArray:
    """[n, hidden] float32 -> list<float32> with n entries, without a Python loop per row."""
    rows, hidden = vectors.shape
    offsets = pa.array(np.arange(0, (rows + 1) * hidden, hidden, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(offsets, values)


def embed_corpus(
    bundle: str,
    input_path: str,
    output_path: str,
    *,
    pooling: str | None = None,
    normalize: bool = True,
    batch_size: int = 64,
    replicas: int = 1,
    text_column: str = "text",
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    providers: str | None = None,
) -> int:
    """Embed every text of `input_path` and write them, in order, to the Parquet `output_path`.

    Args:
        bundle: the bundle directory (it must be readable by every Ray node).
        input_path: a text file (one text per line, split on "\\n" alone; an empty line is an
            empty text) or Parquet (a file or a directory of files) with a string column
            `text_column`.
        output_path: the Parquet file to write: the input's columns plus `embedding`
            (list<float32>), one row per input row, in input order.
        pooling / normalize: as `Encoder.embed` (pooling None: the bundle's).
        batch_size: rows per actor call (and at most per model run).
        replicas: encoder actors; each loads the bundle once.
        cpus_per_replica / gpus_per_replica: Ray resources reserved per actor; the encoder
            uses that many CPU threads (at least one).
        providers: onnxruntime providers for each actor's encoder (see `Encoder.load`).

    Uses the running Ray instance if there is one (`ray.init` / `RAY_ADDRESS`), else starts a
    local one for the call. Returns the number of rows written.
    """
    import ray.data

    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    for name, value in (("batch_size", batch_size), ("replicas", replicas)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}")
    if cpus_per_replica <= 0:
        raise InputError(f"cpus_per_replica must be > 0, got {cpus_per_replica}")
    # Fail here, not inside an actor: a bad bundle would otherwise surface as a Ray task error.
    from fastelectra.bundle import load_bundle

    load_bundle(bundle, verify_hashes=False)
    check_file(output_path, PARQUET)  # before any work: replace only a Parquet file

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False)
    try:
        with _order_preserved():
            dataset = read_corpus(input_path, text_column)
            embedded = dataset.repartition(target_num_rows_per_block=batch_size).map_batches(
                EmbedTexts,
                fn_constructor_kwargs={
                    "bundle": str(Path(bundle).absolute()),
                    "text_column": text_column,
                    "pooling": pooling,
                    "normalize": normalize,
                    "batch_size": batch_size,
                    "threads": max(1, math.floor(cpus_per_replica)),
                    "providers": providers,
                },
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=replicas),
                num_cpus=cpus_per_replica,
                num_gpus=gpus_per_replica,
            )
            return write_parquet(
                embedded.iter_batches(batch_size=None, batch_format="pyarrow"),
                Path(output_path),
                empty_schema=lambda: output_schema(dataset, text_column),
            )
    finally:
        if started_here:
            ray.shutdown()


def read_corpus(input_path: str, text_column: str) -> ray.data.Dataset:
    """A text file (-> column `text_column`) or Parquet, checked to hold `text_column`."""
    import ray.data

    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"{input_path}: no such file or directory")
    source = str(path.absolute())
    if is_parquet(path):
        dataset = ray.data.read_parquet(source)
        schema = dataset.schema()
        names = list(schema.names) if schema is not None else []
        if text_column not in names:
            raise InputError(
                f"{input_path}: no column {text_column!r} (columns: {', '.join(names) or 'none'})"
            )
        if EMBEDDING_COLUMN in names:
            raise InputError(f"{input_path}: already has an {EMBEDDING_COLUMN!r} column")
        return dataset
    # Read here and handed to Ray block by block, not with ray.data.read_text: that splits
    # with str.splitlines() (U+2028, form feed, ... end a line) and drops blank lines, where
    # `fastelectra embed` makes line i of the file row i of the output. It also means the
    # file need only exist where this runs, not on every Ray node.
    blocks = [ray.put(block) for block in read_text_blocks(path, text_column)]
    if not blocks:
        return ray.data.from_arrow(pa.table({text_column: pa.array([], pa.string())}))
    return ray.data.from_arrow_refs(blocks)


def read_text_blocks(
    path: Path, text_column: str, rows_per_block: int = TEXT_BLOCK_ROWS
) -> Iterator[pa.Table]:
    """The file's lines (`fastelectra.runtime.lines`) as tables of one string column."""
    with open(path, "rb") as stream:
        for _, texts in read_line_chunks(stream, str(path), rows_per_block):
            yield pa.table({text_column: pa.array(texts, pa.string())})


def is_parquet(path: Path) -> bool:
    if path.is_dir():
        return any(p.suffix.lower() in PARQUET_SUFFIXES for p in path.rglob("*"))
    return path.suffix.lower() in PARQUET_SUFFIXES


def write_parquet(
    batches: Iterable[pa.Table], output: Path, empty_schema: Callable[[], pa.Schema]
) -> int:
    """Stream `batches` into one Parquet file, atomically; returns the rows written.

    `empty_schema` gives the columns of the file written when there are no batches at all.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for table in batches:
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:  # an empty corpus still gets a readable file with the columns
            pq.write_table(empty_schema().empty_table(), tmp)
        else:
            writer.close()
            writer = None
        check_file(output, PARQUET)  # nothing else took its place meanwhile
        os.replace(tmp, output)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def output_schema(dataset: ray.data.Dataset, text_column: str) -> pa.Schema:
    """The input's columns (just the text for a text file) plus `embedding`."""
    schema = dataset.schema()
    columns = (
        [pa.field(name, dtype) for name, dtype in zip(schema.names, schema.types, strict=True)]
        if schema is not None
        else [pa.field(text_column, pa.string())]
    )
    return pa.schema([*columns, pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32()))])


@contextlib.contextmanager
def _order_preserved() -> Iterator[None]:
    """Make Ray Data keep block order (it trades order for throughput by default)."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    previous = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = previous
