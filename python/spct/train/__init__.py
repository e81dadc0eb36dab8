"""SPCT training: rejective fine-tuning, rule-based GRPO and the Meta RM."""

__all__ = []
