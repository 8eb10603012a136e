"""reporting stage: the run's tables turned into figures (kedro viz previews, MLflow artifacts)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
