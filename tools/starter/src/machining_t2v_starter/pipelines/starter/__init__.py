"""The ``starter`` pipeline: pretrain the starter model from scratch and publish it; ``starter_check``
measures the published folder."""

from .pipeline import create_check_pipeline, create_pipeline

__all__ = ["create_check_pipeline", "create_pipeline"]
