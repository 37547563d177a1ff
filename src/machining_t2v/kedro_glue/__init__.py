"""Kedro glue: the project's datasets, hooks and MLflow tracking helpers."""
