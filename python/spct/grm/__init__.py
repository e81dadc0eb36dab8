"""Generative reward models: prompt formats, scoring, the Meta RM."""

from .meta import MetaRewardModel
from .model import REDUCE, GenerativeRewardModel, Judgement, SampleJudgement
from .templates import FORMATS, Template, messages

__all__ = ["FORMATS", "REDUCE", "GenerativeRewardModel", "Judgement", "MetaRewardModel", "SampleJudgement", "Template",
           "messages"]
