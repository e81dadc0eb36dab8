"""Generative reward models: prompt formats and scoring (Meta RM next)."""

from .model import GenerativeRewardModel, Judgement, SampleJudgement
from .templates import FORMATS, Template, messages

__all__ = ["FORMATS", "GenerativeRewardModel", "Judgement", "SampleJudgement", "Template", "messages"]
