"""The output Parquet dataset (local or s3://): listing, resume bookkeeping, reading back. No Ray.

Exactly-once rules (see README "Resume"):
* every output file is written whole by one write task, named ``part-<run_id>-...parquet``;
* all rows of one manifest id are emitted together by one finalize task, in one block, so they sit in one
  file (a write task bundles whole blocks: finalize.rows_per_file rows or more per file);
* a file without a valid Parquet footer (a run killed mid-write) is not counted and is renamed
  ``*.parquet.incomplete`` before the next run, which recomputes its ids;
* a rerun processes only ids absent from all complete files.
So each id's rows are present in exactly one complete file.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from sew_pipeline import storage

log = logging.getLogger(__name__)
SUFFIX = ".parquet"
# Reading back is latency-bound on object storage (one GET per footer / column chunk): read files concurrently.
IO_THREADS = 16
T = TypeVar("T")


def _map_io(fn: Callable[[str], T], paths: list[str]) -> list[T]:
    """fn over paths on a small thread pool, results in path order."""
    if len(paths) <= 1:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(min(IO_THREADS, len(paths))) as pool:
        return list(pool.map(fn, paths))


@dataclass
class ResultStore:
    uri: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.root = storage.filesystem(self.uri, self.options)
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return not storage.is_remote(self.uri)

    def pyarrow_filesystem(self):
        """What Ray's write_parquet needs: None locally, else the fsspec fs wrapped for pyarrow
        (pyarrow's own S3FileSystem would ignore the configured endpoint)."""
        if self.is_local:
            return None
        from pyarrow.fs import FSSpecHandler, PyFileSystem
        return PyFileSystem(FSSpecHandler(self.fs))

    def files(self, run_id: str | None = None) -> list[str]:
        # Other processes (Ray write tasks) add files: a listing cached by s3fs would hide them, and
        # opening a file missing from the cached listing fails with FileNotFoundError.
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        prefix = f"part-{run_id}-" if run_id else ""
        return sorted(p for p in found if p.endswith(SUFFIX) and p.rsplit("/", 1)[-1].startswith(prefix))

    def _read_file(self, path: str, columns: list[str] | None) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns)

    def quarantine_incomplete(self) -> list[str]:
        """Rename files that are not complete Parquet (no footer) so no reader counts them."""
        def complete(path: str) -> bool:
            try:
                with self.fs.open(path, "rb") as f:
                    pq.read_metadata(f)
                return True
            except Exception:  # noqa: BLE001 - any unreadable file is incomplete
                return False
        paths = self.files()
        bad = [p for p, ok in zip(paths, _map_io(complete, paths)) if not ok]
        for path in bad:
            log.warning("setting aside incomplete output file %s", path.rsplit("/", 1)[-1])
            self.fs.mv(path, path + ".incomplete")
        return bad

    def completed_ids(self) -> set[str]:
        table = self.read(["id"])
        return set(table.column("id").to_pylist()) if table is not None else set()

    def read(self, columns: list[str] | None = None, run_id: str | None = None) -> pa.Table | None:
        tables = _map_io(lambda p: self._read_file(p, columns), self.files(run_id))
        # files of an earlier release lack newer columns: read them as nulls
        return pa.concat_tables(tables, promote_options="default") if tables else None


def read_results(uri: str, storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table | None:
    """All complete output rows of a dataset (any number of runs)."""
    return ResultStore(uri, storage.storage_options(storage_options)).read(columns)
