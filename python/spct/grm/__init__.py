"""Generative reward models: prompt formats, scoring, the Meta RM."""

from .meta import MetaRewardModel
from .model import GenerativeRewardModel, Judgement, SampleJudgement
from .templates import FORMATS, Template, messages

__all__ = ["FORMATS", "GenerativeRewardModel", "Judgement", "MetaRewardModel", "SampleJudgement", "Template", "messages"]
