"""Artefact contracts shared by the stages (no Kedro imports)."""
