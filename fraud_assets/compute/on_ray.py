"""The ``ray`` engine: features on Ray Data partitioned by key, boosters fitted with Ray Train's XGBoost trainer.

**Features.** A month's batch reference (its history, then its own rows: :func:`core.features.batch_reference`)
becomes a Ray Data dataset of plain columns. Two passes group it by a bucket of a key: by card (the card's windows,
habit, label history and new-terminal flag) and by terminal (the terminal's windows). Every row of a card, or of a
terminal, lands in one partition, so :func:`core.features.window_values`, the same code the local engine runs,
gives that key's columns exactly as on the whole data. Each output row carries its position among the month's
rows, and the driver joins both passes back by it, adding the per-transaction columns; the frame is the local
engine's, equal to 1e-9 (the order of floating-point sums is all that differs).

**Training.** The training and validation rows become Ray Data datasets that Ray Train shards over
``compute.train_workers`` workers; each worker builds its DMatrix from its shard and XGBoost's collective joins
them into one booster (histograms and the validation AUPRC all-reduced), stopping early on the same rule. The
booster comes back from the run's checkpoint in XGBoost's own format and goes on exactly as a local one (its
calibrator, threshold, MLflow run and registry version are made by the same code).
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from fraud_assets.core.features import (
    CUSTOMER_PART,
    FEATURE_COLUMNS,
    LABEL,
    TERMINAL_PART,
    KeyPart,
    Rows,
    batch_reference,
    calendar,
    feature_matrix,
    features_frame,
    transaction_values,
    window_values,
)
from fraud_assets.params import ComputeParams, FeatureParams
from fraud_assets.settings import ray_train_storage

_KEY = {"customer": "customer", "terminal": "terminal"}
_PART = {"customer": CUSTOMER_PART, "terminal": TERMINAL_PART}
MODEL_FILE = "model.ubj"
_QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")


def _quiet() -> None:
    """Ray's progress bars and INFO lines off: the console shows the pipeline's own steps."""
    from ray.data import DataContext

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    from ray.data.context import ShuffleStrategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


@contextmanager
def connect(c: ComputeParams) -> Iterator[RayEngine]:
    """A :class:`RayEngine` on the cluster at ``c.address`` (token auth from ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``
    in the environment), or on a local Ray started here and stopped at exit when the address is empty. A driver
    already connected is used as it is."""
    import ray

    started = not ray.is_initialized()
    if started:
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
        if c.address:
            ray.init(address=c.address, **quiet)
        else:
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, c.train_workers * c.cpus_per_worker + 1),
                     **quiet)
    _quiet()
    try:
        yield RayEngine(c)
    finally:
        if started:
            ray.shutdown()


class RayEngine:
    """Features and boosters on the Ray cluster this process is connected to."""

    name = "ray"

    def __init__(self, c: ComputeParams) -> None:
        self._c = c

    def features(self, transactions: pd.DataFrame, p: FeatureParams, history: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
        """:func:`core.features.build_features` on Ray Data: the same frame, computed by key on the cluster."""
        import ray.data

        reference = Rows.from_frame(batch_reference(transactions, history))
        n, first = len(transactions), len(reference.ts) - len(transactions)  # the month's rows come last
        hour, weekday = calendar(transactions)
        values = np.empty((n, len(FEATURE_COLUMNS)))
        for c, v in transaction_values(transactions["amount"].to_numpy(np.float64), hour, weekday, p).items():
            values[:, FEATURE_COLUMNS.index(c)] = v
        if n:
            columns = {"ts": reference.ts, "customer": np.asarray(reference.customer, dtype=object),
                       "terminal": np.asarray(reference.terminal, dtype=object), "amount": reference.amount,
                       "label": reference.label, "row": np.arange(len(reference.ts), dtype=np.int64) - first}
            if reference.label_at is not None:
                columns["label_at"] = reference.label_at
            frame = pd.DataFrame(columns)
            blocks = max(1, min(self._c.partitions, len(frame) // 50_000 + 1))
            dataset = ray.data.from_pandas(_chunks(frame, blocks))
            for by in ("customer", "terminal"):
                part = _by_key(dataset, by, p, self._c.partitions)
                idx = [FEATURE_COLUMNS.index(c) for c in _PART[by]]
                for batch in part.iter_batches(batch_format="numpy", batch_size=None):
                    values[np.ix_(batch["row"], idx)] = np.column_stack([batch[c] for c in _PART[by]])
        return features_frame(transactions, values)

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None, params: dict[str, Any], rounds: int,
            early_stopping_rounds: int | None, columns: list[str]) -> xgb.Booster:
        """:func:`core.train.fit_booster` on Ray Train: ``compute.train_workers`` workers, one booster."""
        import ray.data
        from ray.train import RunConfig, ScalingConfig
        from ray.train.xgboost import XGBoostTrainer

        def rows(frame: pd.DataFrame) -> ray.data.Dataset:
            data = pd.DataFrame(feature_matrix(frame, columns), columns=columns)
            data[LABEL] = frame[LABEL].to_numpy(np.float32)
            return ray.data.from_pandas(_chunks(data, self._c.train_workers))

        datasets = {"train": rows(train)} | ({"valid": rows(valid)} if valid is not None else {})
        config = {"params": params | {"nthread": self._c.cpus_per_worker}, "rounds": rounds,
                  "early_stopping_rounds": early_stopping_rounds, "columns": columns}
        storage = Path(ray_train_storage())
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=storage, prefix="fit-") as run_dir:
            trainer = XGBoostTrainer(
                _train_worker, train_loop_config=config, datasets=datasets,
                scaling_config=ScalingConfig(num_workers=self._c.train_workers,
                                             resources_per_worker={"CPU": self._c.cpus_per_worker},
                                             placement_strategy="SPREAD"),  # a shard per node where it can
                run_config=RunConfig(name="booster", storage_path=run_dir))
            result = trainer.fit()
            with result.checkpoint.as_directory() as folder:
                booster = xgb.Booster(model_file=Path(folder) / MODEL_FILE)
        booster.set_param({"nthread": params.get("nthread", 1)})
        # Kept in the model file (its lineage): how many workers fitted it, how many of them shared rank 0's node.
        booster.set_attr(train_workers=str(result.metrics["workers"]),
                         train_workers_on_node=str(result.metrics["workers_on_node"]))
        return booster


def _chunks(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """``frame`` in ``n`` consecutive blocks of about equal size."""
    bounds = np.linspace(0, len(frame), n + 1).astype(int)
    return [frame.iloc[a:b] for a, b in itertools.pairwise(bounds) if b > a] or [frame]


def _by_key(dataset: Any, by: KeyPart, p: FeatureParams, partitions: int) -> Any:
    """One pass: rows bucketed by ``by``'s key, each bucket's columns from :func:`window_values`."""
    bucketed = dataset.map_batches(partial(_bucket, key=_KEY[by], partitions=partitions), batch_format="pandas")
    return bucketed.groupby("bucket", num_partitions=partitions).map_groups(
        partial(_window_part, by=by, p=p), batch_format="pandas")


def _bucket(batch: pd.DataFrame, key: str, partitions: int) -> pd.DataFrame:
    """A key's bucket (a stable hash of the id, the same on every node and run)."""
    batch["bucket"] = (pd.util.hash_array(batch[key].to_numpy(dtype=object)) % np.uint64(partitions)).astype(np.int64)
    return batch


def _window_part(group: pd.DataFrame, by: KeyPart, p: FeatureParams) -> pd.DataFrame:
    """The ``by`` columns of a bucket's month rows, from every row of its keys (history included)."""
    label_at = group["label_at"].to_numpy(np.float64) if "label_at" in group.columns else None
    reference = Rows(group["ts"].to_numpy(np.int64), group["customer"].astype(str).to_numpy(),
                     group["terminal"].astype(str).to_numpy(), group["amount"].to_numpy(np.float64),
                     group["label"].to_numpy(np.float64), label_at)
    query = group["row"].to_numpy() >= 0
    queries = Rows(reference.ts[query], reference.customer[query], reference.terminal[query],
                   reference.amount[query], reference.label[query], None if label_at is None else label_at[query])
    out = pd.DataFrame(window_values(reference, queries, p, by))
    out.insert(0, "row", group["row"].to_numpy()[query])
    return out


def _train_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: its shard of the rows into a DMatrix, XGBoost's collective does the rest. The finished
    booster is reported once, by rank 0, as a checkpoint in XGBoost's own format (a report per round, as Ray's
    callback does, costs about 2 s a round here: each one is a barrier through the train controller)."""
    import ray.train

    columns = config["columns"]

    def matrix(name: str) -> xgb.DMatrix:
        shard = ray.train.get_dataset_shard(name)
        frame = pd.concat(list(shard.iter_batches(batch_format="pandas", batch_size=None)), ignore_index=True)
        return xgb.DMatrix(frame[columns].to_numpy(np.float32), label=frame[LABEL].to_numpy(),
                           feature_names=columns)

    dtrain = matrix("train")
    evals = [(matrix("valid"), "valid")] if config["early_stopping_rounds"] is not None else []
    booster = xgb.train(config["params"], dtrain, num_boost_round=config["rounds"], evals=evals,
                        early_stopping_rounds=config["early_stopping_rounds"] if evals else None, verbose_eval=False)
    context = ray.train.get_context()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if context.get_world_rank() == 0:
            booster.save_model(Path(folder) / MODEL_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"workers": context.get_world_size(), "workers_on_node": context.get_local_world_size(),
                          "rows": dtrain.num_row()}, checkpoint=checkpoint)
