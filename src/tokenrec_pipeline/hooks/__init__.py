"""Kedro hooks: the MLflow run record, parameter validation before a run, the artefact manifest."""
