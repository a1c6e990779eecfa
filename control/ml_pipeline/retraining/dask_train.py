"""Retraining on a Dask cluster through XGBoost's own Dask integration (`xgboost.dask`).

The lookback window is cut into time partitions; each Dask worker reads its partition from PostgreSQL
itself (the same training query, one server-side cursor per partition) and splits it 70/10/20, stratified
and seeded, so the data never passes through this process. XGBoost trains on the workers' train parts with
early stopping on their validation parts; the test parts (20 %) are gathered here, so the evaluation, the
gate, the champion comparison and the registry are the same as for a run on one machine: `DaskData` is the
data step (and trainer) of the one training pipeline, `training.pipeline.run_training`.
A file source is read here and scattered to the workers in partitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import xgboost as xgb
from dask.delayed import delayed
from distributed import Client, Future
from xgboost import dask as dxgb

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.sources import (
    TIMESTAMP,
    data_window,
    describe_source,
    is_dsn,
    load_training_data,
    window_extent,
)
from ml_pipeline.errors import JobFailed
from ml_pipeline.training.pipeline import DataStep, LoadedData, SplitData, TrainingSettings, utc_datetime64
from ml_pipeline.training.trainer import MIN_ROWS_PER_CLASS, ModelTrainer, Split, stratified_split

PARTITION_ROWS = 250_000
Part = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # X, y, label times (UTC datetime64) of one split part
CONNECT_TIMEOUT_S = 30
PARTS = ("train", "val", "test")


@contextmanager
def dask_data(address: str, source: str, lookback_days: int, query: str, password: str | None) -> Iterator[DaskData]:
    """The data step of a run on the Dask cluster at `address`, connected for as long as the block runs (the
    model's train and validation splits live on the workers)."""
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise JobFailed(f"cannot reach the Dask scheduler {address}: {exc}") from None
    with client:
        yield DaskData(client, source, lookback_days, query, password)


class DaskData(DataStep["DaskModelTrainer"]):
    """The lookback window read in partitions by the workers, split there, and a trainer that trains there."""

    def __init__(self, client: Client, source: str, lookback_days: int, query: str, password: str | None) -> None:
        self.client = client
        self.source = source
        self.lookback_days = lookback_days
        self.query = query
        self.password = password

    def make_trainer(self, settings: TrainingSettings) -> DaskModelTrainer:
        """A DaskModelTrainer on this client."""
        return DaskModelTrainer(self.client, **settings.trainer_kwargs())

    def load(self, trainer: DaskModelTrainer) -> LoadedData:
        """The workers read and split their partitions; the test parts are gathered here."""
        window = trainer.load(self.source, self.lookback_days, self.query, self.password)
        return LoadedData(window, trainer.rows["total"], trainer.rows["fraud"])

    def split(self, trainer: DaskModelTrainer) -> SplitData:
        """Already split on the workers: the DaskDMatrix of the train and validation parts."""
        dtrain, dval = trainer.dask_matrices()
        return SplitData(dtrain, dval, dict(trainer.rows), trainer.test_labelled_at)


class DaskModelTrainer(ModelTrainer):
    """ModelTrainer whose data lives on Dask workers: `load`, then `train(*dask_matrices())`.

    After `load`, `splits["train"]` and `splits["val"]` hold dask arrays on the workers and `splits["test"]`
    numpy arrays here; after `train`, the model is an ordinary Booster trimmed to the best iteration.
    """

    def __init__(self, client: Client, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.rows: dict[str, int] = {}
        self.test_labelled_at: np.ndarray | None = None
        self._parts: list[Future[dict[str, Part]]] = []

    def load(self, source: str, lookback_days: int, query: str, password: str | None) -> dict[str, Any]:
        """Read the window into split partitions on the workers; returns the data window record."""
        if is_dsn(source):
            start, end, total = window_extent(source, lookback_days, query, password)
            if total == 0:
                raise JobFailed(f"no labelled alerts in {describe_source(source)} (last {lookback_days} days)")
            if start is None or end is None:  # rows, but every label time NULL: nothing to cut into partitions
                raise JobFailed(
                    f"the labelled alerts in {describe_source(source)} (last {lookback_days} days) have no "
                    f"{TIMESTAMP}, so they cannot be read in time partitions"
                )
            bounds = time_partitions(start, end, self._partition_count(total))
            self._parts = [
                self.client.submit(
                    read_and_split, source, lookback_days, query, password, bound, self.random_state + i, pure=False
                )
                for i, bound in enumerate(bounds)
            ]
            window = {
                "source": describe_source(source),
                "lookback_days": lookback_days,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "rows": total,
            }
        else:
            frame = load_training_data(source, lookback_days)
            window = data_window(source, lookback_days, frame)
            X, y = frame[FEATURE_NAMES].to_numpy(np.float32), frame[LABEL].to_numpy(np.int8)
            stamps = utc_datetime64(frame[TIMESTAMP]) if TIMESTAMP in frame else None
            count = self._partition_count(len(frame))
            self._parts = []
            for i in range(count):
                X_i, y_i = self.client.scatter([X[i::count], y[i::count]])
                stamps_i = None if stamps is None else self.client.scatter(stamps[i::count])
                self._parts.append(self.client.submit(split_partition, X_i, y_i, self.random_state + i, stamps_i))
        self._gather_test_split()
        return {**window, "rows": self.rows["total"]}

    def dask_matrices(self) -> tuple[dxgb.DaskDMatrix, dxgb.DaskDMatrix]:
        """Train and validation DaskDMatrix over the workers' partitions."""
        matrices = []
        for part in ("train", "val"):
            split = self.splits[part]
            matrices.append(dxgb.DaskDMatrix(self.client, split.X, split.y, feature_names=FEATURE_NAMES))
        return matrices[0], matrices[1]

    def train(  # type: ignore[override]
        self, dtrain: dxgb.DaskDMatrix, dval: dxgb.DaskDMatrix, early_stopping_rounds: int = 20
    ) -> dict[str, Any]:
        """Boost on the cluster with early stopping on the validation parts; keep the best iteration."""
        result = dxgb.train(
            self.client,
            self.params,
            dtrain,
            num_boost_round=self.n_estimators,
            evals=[(dtrain, "train"), (dval, "val")],
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
        )
        booster: xgb.Booster = result["booster"]
        self.best_iteration = int(booster.best_iteration)
        self.model = booster[: self.best_iteration + 1]
        self.model.set_attr(best_iteration=str(self.best_iteration))
        history: dict[str, Any] = result["history"]
        return history

    def _partition_count(self, rows: int) -> int:
        workers = max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))
        return max(workers, math.ceil(rows / PARTITION_ROWS))

    def _gather_test_split(self) -> None:
        """Sizes of every part, dask arrays for train/val, and the test rows gathered here."""
        sizes = self.client.gather([self.client.submit(_sizes, p) for p in self._parts])
        for part in ("train", "val"):
            lengths = [s[part] for s in sizes]
            # Dask arrays where Split declares numpy ones: what reads these splits (DaskDMatrix here, len() and
            # np.asarray in write_training_output) takes either.
            self.splits[part] = Split(
                X=cast(np.ndarray, _stack(self._parts, part, 0, lengths, (len(FEATURE_NAMES),), np.float32)),
                y=cast(np.ndarray, _stack(self._parts, part, 1, lengths, (), np.int8)),
            )
        tests = self.client.gather([self.client.submit(_pick, p, "test") for p in self._parts])
        self.splits["test"] = Split(X=np.concatenate([t[0] for t in tests]), y=np.concatenate([t[1] for t in tests]))
        stamps = [t[2] for t in tests]
        self.test_labelled_at = None if any(s is None for s in stamps) else np.concatenate(stamps)
        self.rows = {
            "total": sum(s["train"] + s["val"] + s["test"] for s in sizes),
            "fraud": sum(s["fraud"] for s in sizes),
            **{part: sum(s[part] for s in sizes) for part in PARTS},
        }


def time_partitions(start: datetime, end: datetime, count: int) -> list[tuple[datetime, datetime | None]]:
    """`count` consecutive half-open time ranges covering [start, end]; the last one is open-ended."""
    step = (end - start) / count
    edges = [start + step * i for i in range(count)]
    return [(lo, edges[i + 1] if i + 1 < count else None) for i, lo in enumerate(edges)]


def read_and_split(
    source: str,
    lookback_days: int,
    query: str,
    password: str | None,
    bound: tuple[datetime, datetime | None],
    seed: int,
) -> dict[str, Part]:
    """On a worker: read one time partition of the window and split it (see split_partition)."""
    frame = load_training_data(source, lookback_days, query=query, password=password, between=bound)
    stamps = utc_datetime64(frame[TIMESTAMP]) if TIMESTAMP in frame else None
    return split_partition(frame[FEATURE_NAMES].to_numpy(np.float32), frame[LABEL].to_numpy(np.int8), seed, stamps)


def split_partition(X: np.ndarray, y: np.ndarray, seed: int, labelled_at: np.ndarray | None = None) -> dict[str, Part]:
    """The seeded, stratified 70/10/20 split of one partition into (X, y, labelled_at or None) parts;
    a partition too small to stratify goes to training."""
    if np.bincount(y, minlength=2).min() < MIN_ROWS_PER_CLASS:
        rows = {"train": np.arange(len(y)), "val": np.arange(0), "test": np.arange(0)}
    else:
        numbers = stratified_split(np.arange(len(y)).reshape(-1, 1), y, seed)
        rows = {name: split.X[:, 0] for name, split in numbers.items()}
    return {name: (X[r], y[r], None if labelled_at is None else labelled_at[r]) for name, r in rows.items()}


def _sizes(parts: dict[str, Part]) -> dict[str, int]:
    return {**{name: len(parts[name][1]) for name in PARTS}, "fraud": int(sum(parts[n][1].sum() for n in PARTS))}


def _pick(parts: dict[str, Part], name: str) -> Part:
    return parts[name]


def _field(parts: dict[str, Part], name: str, index: Literal[0, 1]) -> np.ndarray:
    return parts[name][index]


def _stack(
    futures: list[Future[dict[str, Part]]],
    part: str,
    index: Literal[0, 1],
    lengths: list[int],
    tail: tuple[int, ...],
    dtype: type,
) -> da.Array:
    pieces = [
        da.from_delayed(delayed(_field)(f, part, index), shape=(n, *tail), dtype=dtype)
        for f, n in zip(futures, lengths, strict=True)
        if n
    ]
    stacked: da.Array = da.concatenate(pieces)
    return stacked
