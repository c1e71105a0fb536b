"""What every transport shares: how to build the model pipeline once per worker process."""

from .recipe import MODEL, PipelineRecipe

__all__ = ["MODEL", "PipelineRecipe"]
