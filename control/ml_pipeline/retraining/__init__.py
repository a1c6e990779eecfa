"""Automated retraining: one run (extract → train → gate → compare with the champion → register → notify),
its run records, the cron scheduler that fires it, and training on a Dask cluster."""

from ml_pipeline.retraining.records import RunRecord, RunStore
from ml_pipeline.retraining.run import retrain
from ml_pipeline.retraining.settings import RetrainSettings

__all__ = ["RetrainSettings", "RunRecord", "RunStore", "retrain"]
