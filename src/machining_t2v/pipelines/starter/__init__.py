"""The ``starter`` pipeline: pretrain the starter model from scratch and publish it."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
