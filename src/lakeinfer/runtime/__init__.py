"""What every mode shares: the recipe of a pipeline, and the runtime built from it once per worker."""

from .model_runtime import ModelRuntime, Scored
from .recipe import MODEL, PipelineRecipe

__all__ = ["MODEL", "ModelRuntime", "PipelineRecipe", "Scored"]
