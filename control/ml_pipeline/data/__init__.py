"""Labelled call data: the feature schema, a synthetic generator and the training-data sources."""
