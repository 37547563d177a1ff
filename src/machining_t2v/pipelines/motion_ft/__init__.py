"""The ``motion_ft`` pipeline."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
