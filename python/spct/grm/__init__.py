"""Generative reward models: prompt formats, scoring, the Meta RM."""

from .meta import MetaRewardModel
from .model import REDUCE, GenerativeRewardModel, Judgement, PendingScores, SampleJudgement
from .templates import FORMATS, Template, messages

__all__ = ["FORMATS", "REDUCE", "GenerativeRewardModel", "Judgement", "MetaRewardModel", "PendingScores",
           "SampleJudgement", "Template", "messages"]
