"""Dagster resources: the project (params, paths, DVC versions), MLflow, and a pickle-free IO manager."""


import ctypes
import ctypes.util
import gc
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from mlflow.tracking import MlflowClient
from pydantic import PrivateAttr

from fraud_assets.adapters import dvc_repo, mlflow_registry
from fraud_assets.adapters.online_store import TransactionStore, open_store
from fraud_assets.adapters.prediction_log import read_month, shadow_pairs
from fraud_assets.compute import Engine, open_engine
from fraud_assets.params import ComputeParams


class ProjectResource(dg.ConfigurableResource):
    """The project folder, its snapshot folder (``data.dir``) and the DVC-pinned data versions."""

    root: str
    data_subdir: str

    def data_dir(self) -> Path:
        return Path(self.root) / self.data_subdir

    def snapshot_version(self, month: str) -> str:
        """The DVC hash of a month's snapshot (raises if the file changed since it was pinned)."""
        return dvc_repo.snapshot_version(Path(self.root), self.data_subdir, month)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry, through an explicit client (no process-wide run state).

    Runs are tagged ``dagster_run_id`` as dagster-mlflow does, so either can find them.
    """

    tracking_uri: str
    artifact_root: str
    experiment_name: str
    _client: MlflowClient | None = PrivateAttr(default=None)

    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_registry.client_for(self.tracking_uri)
        return self._client

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        """Create a run in the project experiment and return its id."""
        exp_id = mlflow_registry.ensure_experiment(self.client(), self.experiment_name, self.artifact_root)
        return self.client().create_run(exp_id, run_name=run_name, tags=tags).info.run_id


class ComputeResource(dg.ConfigurableResource):
    """Where the assets compute features and boosters (params.yaml ``compute``): ``local`` in the run's process,
    ``ray`` on the Ray cluster at ``address`` (the assets submit their work to it; empty: a local Ray started for
    the run). Connected on the first asset that asks, disconnected when the run's step ends."""

    engine: str
    address: str
    partitions: int
    train_workers: int
    cpus_per_worker: int
    _engine: Engine | None = PrivateAttr(default=None)
    _stack: ExitStack | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, c: ComputeParams, address: str | None = None) -> "ComputeResource":
        """The resource for ``c`` (``address`` instead of ``c.address`` when given: ``$FRAUD_RAY_ADDRESS``)."""
        return cls(**(c.model_dump() | ({"address": address} if address is not None else {})))

    def get(self) -> Engine:
        """The engine, connected."""
        if self._engine is None:
            self._stack = ExitStack()
            self._engine = self._stack.enter_context(open_engine(ComputeParams(
                engine=self.engine, address=self.address, partitions=self.partitions,
                train_workers=self.train_workers, cpus_per_worker=self.cpus_per_worker)))
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack, self._engine = None, None


class OnlineStoreResource(dg.ConfigurableResource):
    """The online store of past transactions that serving's features read: a SQLite path (the default) or a
    ``postgresql://`` URL."""

    path: str

    def get(self) -> TransactionStore:
        """The store (opened on first use by its own methods)."""
        return open_store(self.path)


class PredictionLogResource(dg.ConfigurableResource):
    """The serving prediction log (written by the Ray Serve replicas), read-only: a SQLite path (the default) or a
    ``postgresql://`` URL (give it as ``dg.EnvVar`` so the UI shows the variable, not the password)."""

    path: str

    def read_month(self, month: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Predictions of transactions dated in ``month`` and every label received (empty when no log yet)."""
        return read_month(self.path, month)

    def shadow_pairs(self, shadow_version: str, start: datetime, end: datetime) -> pd.DataFrame:
        """The champion's and shadow ``shadow_version``'s scores of the same transactions dated in ``[start, end)``,
        with their labels (``prediction_log.shadow_pairs``)."""
        return shadow_pairs(self.path, shadow_version, start, end)


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` into a temporary file beside ``path``, flush it to disk, then rename it over ``path``: a crash
    leaves the previous version or the new one, never a truncated file (a rename within a folder is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


RELEASE_ABOVE = 64 * 2**20  # bytes the process grew by since the last release that make the next one worth it


class _Released:
    rss = 0  # the process's resident memory after the last release (bytes)


def release_memory() -> None:
    """Give the memory the last step freed back to the system: the objects it left in reference cycles (a step's
    frames, through Dagster's contexts) collected, Arrow's unused pages released, and the C heap trimmed (glibc's
    ``malloc_trim``, where the C library has it), so a step starts from what the process holds, not from its
    predecessor's peak. Called before a step reads its inputs and after each run of `fraud pipeline`; at 1.75 M
    transactions it takes 200-300 MB off the process between steps.

    A full collection takes 0.2-0.5 s in a process with Dagster loaded, so it runs only when the process has grown
    by :data:`RELEASE_ABOVE` since the last one (small months, the tests, skip it); where the resident size cannot
    be read, always."""
    rss = _rss()
    if rss is not None and rss - _Released.rss < RELEASE_ABOVE:
        return
    gc.collect()
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    _Released.rss = _rss() or 0


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux's ``/proc/self/statm``), None where there is none."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20  # blocks from this size up get pages of their own, handed back when freed


def frugal_allocators() -> None:
    """Allocators that give freed memory back, for a process that runs many steps (`fraud pipeline`).

    Arrow's default allocator (mimalloc) keeps the pages of every Parquet file it decoded for its own reuse, where
    pandas and numpy cannot reuse them: with the system's, one heap serves both. glibc serves blocks below a
    threshold from its heap, and raises that threshold (up to 32 MB) each time such a block is freed, so a step's
    columns and matrices end up in the heap, where the small objects every step leaves behind pin them; fixed at
    :data:`MMAP_THRESHOLD`, each of them is mapped on its own and unmapped when freed. At 1.75 M transactions the
    process held 530-620 MB between steps with it, 560-950 MB without.
    """
    pa.set_memory_pool(pa.system_memory_pool())
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


@lru_cache(maxsize=1)  # find_library runs ldconfig: once a process, not at every release
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


BY_PARTITION = "by_partition"  # AssetIn metadata: load a partition range as {partition: value}
LAZY = "lazy"  # AssetIn metadata beside BY_PARTITION: load it as PartitionFrames, each partition read when looked up


class PartitionFrames(Mapping[str, Any]):
    """An asset's materialized partitions (a range of months), each read from its file when it is looked up and
    never kept: a step holds the months it is using, not every month of the range for as long as it runs. Looking
    a partition up twice reads it twice; ``in``, ``len`` and iteration read nothing."""

    def __init__(self, load: Callable[[str], Any], partitions: Sequence[str]) -> None:
        self._load, self._partitions = load, list(partitions)

    def __getitem__(self, partition: str) -> Any:
        if partition not in self._partitions:
            raise KeyError(partition)
        return self._load(partition)

    def __contains__(self, partition: object) -> bool:
        return partition in self._partitions

    def __iter__(self) -> Iterator[str]:
        return iter(self._partitions)

    def __len__(self) -> int:
        return len(self._partitions)


class FrameIOManager(dg.ConfigurableIOManager):
    """DataFrames as Parquet, dicts as JSON, one file per asset partition; never pickles."""

    base_dir: str

    def _path(self, key: dg.AssetKey, partition: str | None, suffix: str) -> Path:
        folder = Path(self.base_dir).joinpath(*key.path)
        return folder / f"{partition or '__all__'}{suffix}"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        if isinstance(obj, pd.DataFrame):
            write_atomically(self._path(context.asset_key, partition, ".parquet"),
                             lambda tmp: obj.to_parquet(tmp, index=False))
        elif isinstance(obj, dict):
            text = json.dumps(obj, indent=2, sort_keys=True, default=str)
            write_atomically(self._path(context.asset_key, partition, ".json"), lambda tmp: tmp.write_text(text))
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: cannot store {type(obj).__name__}; "
                            "assets return DataFrames or dicts")

    def load_input(self, context: dg.InputContext) -> Any:
        release_memory()
        key, metadata = context.asset_key, context.definition_metadata or {}
        if context.has_asset_partitions and metadata.get(BY_PARTITION):
            present = [p for p in context.asset_partition_keys if self._exists(key, p)]
            if metadata.get(LAZY):
                return PartitionFrames(lambda p: self._load(key, p), present)
            return {p: self._load(key, p) for p in present}
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._load(key, partition)

    def load_partition(self, asset: str, partition: str | None) -> Any:
        """What a run stored for ``asset`` (``partition`` of it), for a caller outside the run (the CLI's runner).

        Raises:
            FileNotFoundError: it has not been materialized.
        """
        return self._load(dg.AssetKey(asset), partition)

    def _exists(self, key: dg.AssetKey, partition: str | None) -> bool:
        return any(self._path(key, partition, s).exists() for s in (".parquet", ".json"))

    def _load(self, key: dg.AssetKey, partition: str | None) -> Any:
        parquet, js = self._path(key, partition, ".parquet"), self._path(key, partition, ".json")
        if parquet.exists():
            return pd.read_parquet(parquet)
        if js.exists():
            return json.loads(js.read_text())
        where = f" partition {partition}" if partition else ""
        raise FileNotFoundError(f"{key.to_user_string()}{where} has not been materialized ({parquet.parent})")
