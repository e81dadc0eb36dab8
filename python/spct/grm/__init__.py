"""Generative reward models: prompt formats (and, next, scoring and Meta RM)."""

from .templates import FORMATS, Template, messages

__all__ = ["FORMATS", "Template", "messages"]
