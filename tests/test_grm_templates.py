"""GRM prompt formats: the markers the released checkpoints expect, response order, hint, judgement, errors."""

from __future__ import annotations

import pytest

import spct
from spct.grm import Template, messages


def test_pointwise_has_the_markers_in_order():
    turns = messages("What is 2 + 2?", ["4", "5"])
    assert [t["role"] for t in turns] == ["user"]
    text = turns[0]["content"]
    marks = ["#### Conversation Context ####", "What is 2 + 2?", "#### Responses to be Scored ####",
             "[The Begin of Response 1]\n4\n[The End of Response 1]",
             "[The Begin of Response 2]\n5\n[The End of Response 2]", "Specific Criteria:", "Analysis:",
             "Scores: \\boxed{x, x}"]
    positions = [text.index(m) for m in marks]
    assert positions == sorted(positions)
    assert "from 1 to 10" in text


def test_the_example_group_is_one_that_extraction_reads_as_invalid():
    # the prompt shows \boxed{x, x}; a model that copies it must not score
    text = messages("q", ["a", "b"])[0]["content"]
    assert not bool(spct.extract_scores([text], num_responses=2).valid[0])


def test_chat_turns_single_format_hint_and_judgement():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Sum 1..3?"}]
    text = messages(conv, ["6"], format="single")[0]["content"]
    assert "User: Hi\n\nAssistant: Hello\n\nUser: Sum 1..3?" in text and "Score 1 if it is correct" in text
    assert "\\boxed{x}" in text
    hinted = messages("q", ["a", "b", "c"], hint=2)[0]["content"]
    assert hinted.endswith("The best response is: Response 2")
    meta = messages("q", ["a", "b"], format="meta", judgement="Specific Criteria: ...")
    assert [t["role"] for t in meta] == ["user", "assistant"] and meta[1]["content"] == "Specific Criteria: ..."
    custom = Template(instructions="Judge {n} answers, {lo}..{hi}.", output="Scores: \\boxed{example}")
    assert "Judge 2 answers, 0..5." in messages("q", ["a", "b"], format=custom, score_range=(0, 5))[0]["content"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"responses": []}, "at least one response"), ({"query": "  "}, "query must not be empty"),
     ({"format": "listwise"}, "format must be one of"), ({"hint": 3}, r"hint must be a response number in \[1, 2\]")],
)
def test_bad_input(kwargs, match):
    args = {"query": "q", "responses": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=match):
        messages(args.pop("query"), args.pop("responses"), **args)
