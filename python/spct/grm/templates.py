"""GRM prompt formats (docs/method.md section 2), in our own words, with the markers the released DeepSeek-GRM
checkpoints expect: `#### Conversation Context ####`, `#### Responses to be Scored ####`, `[The Begin of Response
i]` / `[The End of Response i]`, and the output parts `Specific Criteria:`, `Analysis:`, `Scores: \\boxed{...}`.

`messages(...)` builds the chat turns; the caller wraps them with the tokenizer's chat template. A template is a
plain format string, so users can pass their own (the placeholders are documented on `Template`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FORMATS", "Template", "format_conversation", "messages"]

Turn = dict  # {"role": "user" | "assistant" | "system", "content": str}


@dataclass(frozen=True)
class Template:
    """`instructions` may use {n} (responses), {lo} and {hi} (score range) and {example} (an example score group);
    the conversation and response blocks follow it, then `output`."""

    instructions: str
    output: str


POINTWISE = Template(
    instructions=(
        "You are a strict and impartial judge. Rate each of the {n} responses below as an answer to the last user "
        "turn of the conversation, with an integer from {lo} to {hi} ({hi} is best).\n"
        "First write specific criteria for this conversation, each with a weight, for example:\n"
        "- Correctness (Weight: 40%): 9-10 fully correct; 5-8 minor slips; 1-4 wrong or misleading.\n"
        "- Helpfulness (Weight: 30%): does it do what the user asked, completely?\n"
        "- Safety (Weight: 30%): no harmful, unethical or dangerous content.\n"
        "Then analyse every response against your criteria, and only then give the scores."),
    output=(
        "#### Output Format Requirements ####\n"
        "Specific Criteria: <your criteria with weights>\n"
        "Analysis: <your analysis of each response>\n"
        "Scores: \\boxed{example}"),
)

SINGLE = Template(
    instructions=(
        "You are a strict judge. Decide whether the response below correctly and completely answers the last user "
        "turn of the conversation. Score 1 if it is correct and 0 if it is not.\n"
        "First write specific criteria for this conversation, then analyse the response, then give the score."),
    output=(
        "#### Output Format Requirements ####\n"
        "Specific Criteria: <your criteria>\n"
        "Analysis: <your analysis>\n"
        "Scores: \\boxed{example}"),
)

META = Template(
    instructions="Score the responses to the last user turn of the conversation.",
    output="",
)

FORMATS = {"pointwise": POINTWISE, "single": SINGLE, "meta": META}


def format_conversation(query: str | Sequence[Turn]) -> str:
    """A query string, or chat turns as 'Role: content' lines."""
    if isinstance(query, str):
        return query
    return "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in query)


def _body(template: Template, query, responses: Sequence[str], lo: int, hi: int) -> str:
    n = len(responses)
    example = "{" + ", ".join(["x"] * n) + "}"
    blocks = "\n".join(f"[The Begin of Response {i}]\n{r}\n[The End of Response {i}]"
                       for i, r in enumerate(responses, 1))
    parts = [template.instructions.format(n=n, lo=lo, hi=hi, example=example),
             "#### Conversation Context ####\n" + format_conversation(query),
             "#### Responses to be Scored ####\n" + blocks]
    if template.output:
        parts.append(template.output.replace("\\boxed{example}", "\\boxed" + example))
    return "\n\n".join(parts)


def messages(query: str | Sequence[Turn], responses: Sequence[str], *, format: str | Template = "pointwise",
             score_range: tuple[int, int] = (1, 10), hint: int | None = None,
             judgement: str | None = None) -> list[Turn]:
    """The chat turns of one GRM prompt. responses: in the order to show them; hint: the 1-based best response
    (hinted sampling for rejective fine-tuning); judgement: the GRM's principles + critique (Meta RM input, as the
    assistant turn)."""
    if isinstance(format, str) and format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)} or a Template, got {format!r}")
    template = FORMATS[format] if isinstance(format, str) else format
    if not responses:
        raise ValueError("responses must hold at least one response")
    if isinstance(query, str) and not query.strip():
        raise ValueError("query must not be empty")
    lo, hi = (0, 1) if template is SINGLE else score_range
    text = _body(template, query, responses, lo, hi)
    if hint is not None:
        if not 1 <= hint <= len(responses):
            raise ValueError(f"hint must be a response number in [1, {len(responses)}], got {hint}")
        text += f"\n\nThe best response is: Response {hint}"
    turns: list[Turn] = [{"role": "user", "content": text}]
    if judgement is not None:
        turns.append({"role": "assistant", "content": judgement})
    return turns
