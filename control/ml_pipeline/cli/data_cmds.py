"""`ml-pipeline demo-data`: write synthetic labelled alerts to a CSV/Parquet file or a PostgreSQL table."""

from __future__ import annotations

from pathlib import Path

import click

from ml_pipeline.cli.checks import writable_file
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data import database
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import redact_dsn, write_alerts_to_postgres
from ml_pipeline.errors import UsageError

FILE_WRITERS = {".csv": "to_csv", ".parquet": "to_parquet", ".pq": "to_parquet"}


def database_password(dsn: str, config: MLPipelineConfig) -> str | None:
    """The password for `dsn`: none if the DSN carries its own, else YUGABYTE_PASSWORD (if set)."""
    return database.password_for(dsn, config.database.password)


@click.command("demo-data")
@click.option("--rows", type=click.IntRange(min=1), default=100_000, show_default=True, help="Alerts to generate.")
@click.option("--days", type=click.IntRange(min=1), default=14, show_default=True, help="Days the labels span.")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed (same seed, same features).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write a .csv or .parquet file.")
@click.option("--to", "dsn", metavar="postgresql://...", help="Load into the labelled_alerts table of this database.")
@json_option
def demo_data(rows: int, days: int, seed: int, out: Path | None, dsn: str | None, as_json: bool) -> None:
    """Generate labelled alerts (SIM-box, Wangiri, IRSF, CLI spoofing vs normal) ending now."""
    if (out is None) == (dsn is None):
        raise UsageError("give exactly one destination: --out FILE.csv|FILE.parquet or --to postgresql://...")
    if out is not None and out.suffix.lower() not in FILE_WRITERS:
        raise UsageError(f"{out}: unknown file type {out.suffix or '(none)'!r}; use .csv or .parquet")
    if dsn is not None:
        database.check_dsn(dsn, "--to")
    if out is not None:
        writable_file(out, "--out")
    frame = generate_alerts(rows, days=days, seed=seed)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        getattr(frame, FILE_WRITERS[out.suffix.lower()])(out, index=False)
        destination = str(out)
    else:
        assert dsn is not None  # exactly one destination was given (checked above)
        write_alerts_to_postgres(dsn, frame, password=database_password(dsn, MLPipelineConfig.from_env()))
        destination = f"{redact_dsn(dsn)} (table labelled_alerts)"
    summary = {
        "destination": destination,
        "rows": rows,
        "fraud_rows": int(frame["is_fraud"].sum()),
        "fraud_rate": round(float(frame["is_fraud"].mean()), 4),
        "first_label": frame["labelled_at"].iloc[0].isoformat(),
        "last_label": frame["labelled_at"].iloc[-1].isoformat(),
        "seed": seed,
    }
    emit(summary, as_json, title="Generated labelled alerts")


COMMANDS = [demo_data]
