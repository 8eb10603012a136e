"""Kedro datasets, the artefact manifest, and the MLflow bindings (the logged model, the runs table)."""
