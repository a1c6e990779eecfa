"""Training data behind one function: a local CSV/Parquet file or a PostgreSQL/YugabyteDB table via asyncpg.

Whatever the source, `load_training_data` returns the eight FEATURE_NAMES as float64 (NaN = missing),
`is_fraud` as int8 0/1 and, when the source has it, `labelled_at` (UTC). Every way the data can be
unusable gives one UsageError (bad input) or JobFailed (database unreachable or empty window), with any
DSN shown without its password.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from ml_pipeline.config import DEFAULT_TRAINING_QUERY, TrainingConfig
from ml_pipeline.data import database
from ml_pipeline.data.database import is_dsn as is_dsn  # re-exported: callers import it from here
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.redaction import redact

TIMESTAMP = "labelled_at"
TABLE = "labelled_alerts"
TABLE_COLUMNS = ["alert_id", "caller", *FEATURE_NAMES, LABEL, TIMESTAMP]
CHUNK_ROWS = 20_000
CONNECT_TIMEOUT_S = database.CONNECT_TIMEOUT_S
#: Float32 is what XGBoost and the server score in: larger magnitudes would become infinite there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def redact_dsn(dsn: str) -> str:
    """The DSN without any password (user-info or a password parameter): `redaction.redact` of the DSN."""
    return redact(dsn)


def file_path(source: str) -> str:
    """A file source without its optional `file:` prefix (the form ML_PREDICTION_LOG and training.json use)."""
    return source[5:] if source.startswith("file:") and not source.startswith("file://") else source


def describe_source(source: str) -> str:
    """How a source is recorded in training metadata and run records: `file:<absolute path>` or the address
    (any scheme, even one refused later) without its password."""
    if database.url_scheme(source) is not None:
        return redact(source)
    return redact(f"file:{Path(file_path(source)).resolve()}")


def load_training_data(
    source: str,
    lookback_days: int | None = None,
    query: str | None = None,
    password: str | None = None,
    between: tuple[datetime, datetime | None] | None = None,
) -> pd.DataFrame:
    """Load labelled alerts from a .csv/.parquet file or a `postgresql://` DSN.

    For a database, `query` (default: the configured training query) gets `lookback_days` (default 7) as
    the bound parameter $1; `between` = (start, end or None) keeps only its rows with start <= labelled_at
    < end (one partition of the window, read in parallel by Dask workers). For a file, `lookback_days`
    keeps only rows labelled in the last that many days (needs a `labelled_at` column); None keeps every row.
    """
    database.check_scheme(source, "--data")
    if is_dsn(source):
        days = TrainingConfig().lookback_days if lookback_days is None else lookback_days
        sql = str(query or DEFAULT_TRAINING_QUERY)  # a plain str: asyncpg refuses str subclasses (TrainingQuery)
        if between is not None:
            sql = (
                f"SELECT * FROM ({_bare(sql)}) AS part "
                f"WHERE part.{TIMESTAMP} >= $2 AND ($3::timestamptz IS NULL OR part.{TIMESTAMP} < $3)"
            )
        frame = asyncio.run(_read_postgres(source, sql, days, password, *(between or ())))
        where = f"{redact_dsn(source)} (last {days} days)"
        if frame.empty and between is None:  # an empty partition is fine; window_extent checks the window
            raise JobFailed(
                f"no labelled alerts in {where}; load some (ml-pipeline demo-data --to DSN) or raise --lookback-days"
            )
    else:
        source = file_path(source)
        frame = _read_file(Path(source), lookback_days)
        where = str(source)
        if frame.empty:
            raise UsageError(f"{where} has no labelled alerts{_window_hint(lookback_days)}")
    return _validated(frame, where)


def window_extent(
    dsn: str, lookback_days: int, query: str | None = None, password: str | None = None
) -> tuple[datetime | None, datetime | None, int]:
    """First and last label time and row count of the training query's window (to cut it into partitions)."""
    sql = f"SELECT min({TIMESTAMP}), max({TIMESTAMP}), count(*) FROM ({_bare(query or DEFAULT_TRAINING_QUERY)}) AS w"
    return asyncio.run(_fetch_extent(dsn, sql, lookback_days, password))


def data_window(source: str, lookback_days: int | None, frame: pd.DataFrame) -> dict[str, Any]:
    """The `data_window` record of training.json: source (no password), lookback, first/last label time, rows."""
    start = end = None
    if TIMESTAMP in frame and len(frame):
        start, end = frame[TIMESTAMP].min().isoformat(), frame[TIMESTAMP].max().isoformat()
    elif lookback_days is not None:
        now = datetime.now(UTC)
        start, end = (now - timedelta(days=lookback_days)).isoformat(), now.isoformat()
    return {
        "source": describe_source(source),
        "lookback_days": lookback_days,
        "start": start,
        "end": end,
        "rows": len(frame),
    }


def write_alerts_to_postgres(dsn: str, frame: pd.DataFrame, password: str | None = None) -> int:
    """Create the labelled_alerts table if needed and COPY `frame` into it; returns the number of rows."""
    missing = [c for c in TABLE_COLUMNS if c not in frame]
    if missing:
        raise UsageError(f"cannot write alerts: columns missing: {', '.join(missing)}")
    return asyncio.run(_copy_into_postgres(dsn, frame, password))


# ---- files ----


def _read_file(path: Path, lookback_days: int | None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise UsageError(redact(f"{path}: unknown file type {suffix or '(none)'!r}; use a .csv or .parquet file"))
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    if lookback_days is None:
        return frame
    if TIMESTAMP not in frame:
        raise UsageError(f"{path} has no {TIMESTAMP} column, so --lookback-days cannot apply; leave it out")
    labelled = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame[labelled >= pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=lookback_days)]


def _window_hint(lookback_days: int | None) -> str:
    return f" labelled in the last {lookback_days} days" if lookback_days is not None else ""


# ---- validation shared by both sources ----


def _validated(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in (*FEATURE_NAMES, LABEL) if c not in frame]
    if missing:
        raise UsageError(
            f"{where}: columns missing: {', '.join(missing)} (expected {', '.join(FEATURE_NAMES)}, {LABEL})"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for name in FEATURE_NAMES:
        try:
            out[name] = pd.to_numeric(frame[name], errors="raise").to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            raise UsageError(f"{where}: column {name} holds non-numeric values") from None
    labels = pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        example = frame[LABEL].to_numpy()[np.flatnonzero(bad)[0]]
        raise UsageError(f"{where}: {LABEL} must be 0 or 1; {int(bad.sum())} rows are not (first: {example!r})")
    _refuse_infinite(out, where)
    out[LABEL] = labels.astype(np.int8)
    if TIMESTAMP in frame:
        out[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True).array  # datetime64, not a Timestamp per row
    return out


def _refuse_infinite(features: pd.DataFrame, where: str) -> None:
    """UsageError naming the first column and row holding inf (or a value float32 cannot hold)."""
    values = features.to_numpy(dtype=np.float64)
    bad = np.abs(values) > FLOAT32_MAX  # inf too; NaN compares False (NaN = missing, allowed)
    if not bad.any():
        return
    row, column = (int(i) for i in np.argwhere(bad)[0])
    raise UsageError(
        f"{where}: column {features.columns[column]} holds {float(values[row, column])!r} in row {row + 1} "
        f"(data rows counted from 1; {int(bad.sum())} such values in all): features must be finite numbers, "
        "an empty cell or nan marks a missing value"
    )


# ---- PostgreSQL ----


async def _connect(dsn: str, password: str | None) -> asyncpg.Connection:
    return await database.connect(dsn, password, CONNECT_TIMEOUT_S, what="the training database")


def _bare(query: str) -> str:
    return query.strip().rstrip(";")


async def _fetch_extent(
    dsn: str, sql: str, lookback_days: int, password: str | None
) -> tuple[datetime | None, datetime | None, int]:
    conn = await _connect(dsn, password)
    try:
        start, end, rows = await conn.fetchrow(sql, lookback_days)
    except asyncpg.UndefinedColumnError as exc:
        raise UsageError(f"the training query must return {TIMESTAMP} to be read in partitions: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise UsageError(f"the training query failed on {redact_dsn(dsn)}: {exc} (see ML_TRAINING_QUERY)") from None
    finally:
        await conn.close()
    return start, end, int(rows)


async def _read_postgres(
    dsn: str, query: str, lookback_days: int, password: str | None, *bounds: datetime | None
) -> pd.DataFrame:
    """Stream the query's rows through a server-side cursor, converting each chunk to numpy columns."""
    conn = await _connect(dsn, password)
    try:
        # timestamptz as integer microseconds: no datetime object per row (a third of the read time otherwise)
        await conn.set_type_codec(
            "timestamptz", schema="pg_catalog", encoder=_timestamp_tuple, decoder=_tuple_micros, format="tuple"
        )
        async with conn.transaction(readonly=True):
            try:
                statement = await conn.prepare(query)
            except asyncpg.UndefinedTableError as exc:
                raise UsageError(
                    f"{redact_dsn(dsn)}: {exc}; create and fill it with `ml-pipeline demo-data --to DSN` "
                    f"or apply {files('ml_pipeline.data') / 'schema.sql'}"
                ) from None
            except asyncpg.PostgresError as exc:
                raise UsageError(
                    f"the training query failed on {redact_dsn(dsn)}: {exc} (see ML_TRAINING_QUERY)"
                ) from None
            names = [a.name for a in statement.get_attributes()]
            wanted = [c for c in (*FEATURE_NAMES, LABEL, TIMESTAMP) if c in names]
            chunks: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
            cursor = await statement.cursor(lookback_days, *bounds)
            while records := await cursor.fetch(CHUNK_ROWS):
                for column in wanted:
                    chunks[column].append(_column(records, names.index(column), column))
    except (OSError, asyncpg.InterfaceError) as exc:
        raise JobFailed(f"lost the connection to {redact_dsn(dsn)}: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise JobFailed(f"reading training data from {redact_dsn(dsn)} failed: {exc}") from None
    finally:
        await conn.close()
    # One column at a time, dropping its chunks as soon as they are joined: peak = the data + one column.
    data = {c: np.concatenate(parts) if (parts := chunks.pop(c)) else np.empty(0) for c in wanted}
    if TIMESTAMP in data:
        data[TIMESTAMP] = pd.to_datetime(data[TIMESTAMP].astype(np.int64), unit="us", utc=True)
    return pd.DataFrame(data)


PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
PG_EPOCH_UNIX_US = int(PG_EPOCH.timestamp()) * 1_000_000


def _tuple_micros(value: tuple[int]) -> int:
    return value[0]


def _timestamp_tuple(value: datetime) -> tuple[int]:
    return ((value - PG_EPOCH) // timedelta(microseconds=1),)


def _column(records: list[asyncpg.Record], index: int, name: str) -> np.ndarray:
    values = [r[index] for r in records]
    if name == TIMESTAMP:
        if values and isinstance(values[0], int):  # timestamptz, decoded as microseconds since 2000-01-01
            return np.array(values, dtype=np.int64) + PG_EPOCH_UNIX_US
        micros: np.ndarray = pd.to_datetime(values, utc=True).as_unit("us").asi8
        return micros
    return np.array(values, dtype=np.float64)


async def _copy_into_postgres(dsn: str, frame: pd.DataFrame, password: str | None) -> int:
    conn = await _connect(dsn, password)
    try:
        await conn.execute((files("ml_pipeline.data") / "schema.sql").read_text())
        result = await conn.copy_records_to_table(TABLE, records=_records(frame), columns=TABLE_COLUMNS)
    except asyncpg.UniqueViolationError:
        raise UsageError(
            f"{redact_dsn(dsn)}: {TABLE} already holds alerts with these ids; use another --seed or empty the table"
        ) from None
    except asyncpg.PostgresError as exc:
        raise JobFailed(f"writing alerts to {redact_dsn(dsn)} failed: {exc}") from None
    finally:
        await conn.close()
    return int(result.split()[-1])


def _records(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows as tuples for COPY: NaN features become NULL, timestamps become aware datetimes."""
    columns: list[Any] = [frame["alert_id"].astype(str).tolist(), frame["caller"].astype(str).tolist()]
    for name in FEATURE_NAMES:
        values = frame[name].to_numpy(dtype=np.float64)
        as_objects = values.astype(object)
        as_objects[np.isnan(values)] = None
        columns.append(as_objects.tolist())
    columns.append(frame[LABEL].astype(int).tolist())
    columns.append(pd.to_datetime(frame[TIMESTAMP], utc=True).dt.to_pydatetime().tolist())
    return list(zip(*columns, strict=True))
