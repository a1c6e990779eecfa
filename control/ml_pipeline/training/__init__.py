"""Training (XGBoost) and evaluation of fraud models."""
