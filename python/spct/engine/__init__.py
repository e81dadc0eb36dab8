"""Model loading and the multi-sample decoding engine."""

from .engine import Allow, Constraint, Engine, Force, Sample
from .models import fetch
from .samples import pad_samples

__all__ = ["Allow", "Constraint", "Engine", "Force", "Sample", "fetch", "pad_samples"]
