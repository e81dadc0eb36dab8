"""Model loading and inference engine."""

from .models import fetch

__all__ = ["fetch"]
