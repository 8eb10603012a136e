"""recommend stage: top-K items for known users, raw histories, and new items."""

from .pipeline import (
    create_add_items_pipeline,
    create_example_requests_pipeline,
    create_inference_pipeline,
    create_pipeline,
)

__all__ = ["create_pipeline", "create_add_items_pipeline", "create_inference_pipeline",
           "create_example_requests_pipeline"]
