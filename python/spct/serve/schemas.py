"""The request bodies of `spct serve`, as pydantic models (docs/serve.md has the contract), and the one-line message
of a validation error.

Types are strict: "2" is not an int and 1 is not a bool, so a wrong type is a 422 naming the field, never a silent
conversion. Limits that depend on the server's flags (`--max-items`, `--max-k`, `--max-tokens`) are checked by the
routes (400), not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatRequest", "Item", "Message", "RewardRequest", "ScoreRequest", "field_name", "one_line", "pick"]

SEED = Field(None, ge=0, lt=2**63)
UNION_TAGS = ("str", "list[Message]", "list[str]", "int", "float", "bool")  # the branches pydantic names in a loc
KINDS = {"str": "a string", "list[Message]": "a list of chat messages ({'role', 'content'})",
         "list[str]": "a list of strings", "int": "an integer", "float": "a number", "bool": "true or false"}


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class Item(BaseModel):
    """A query (text, or a chat conversation) and the responses to judge. Other fields of the item format (`id`,
    `best`, ...) are accepted and not used, so lines of a `spct score` input file can be sent as they are."""

    model_config = ConfigDict(strict=True, extra="ignore")

    query: Annotated[str, Field(min_length=1)] | Annotated[list[Message], Field(min_length=1)]
    responses: list[str] = Field(min_length=1)
    id: Any = None


class ScoreRequest(BaseModel):
    """POST /v1/score. None: the server's default (its flags)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    items: list[Item] = Field(min_length=1)
    k: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    temperature: float | None = Field(None, ge=0, le=100)
    max_new_tokens: int | None = Field(None, ge=1)
    force_scores: bool | None = None
    k_meta: int | None = Field(None, ge=1)
    reduce: Literal["sum", "mean"] | None = None
    orders: Literal["random", "balanced"] = "random"
    return_samples: bool = False


class RewardRequest(BaseModel):
    """POST /get_reward, OpenRLHF's body: query[i] = prompts[i] + a response. Other fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class ChatRequest(BaseModel):
    """POST /v1/chat/completions, an OpenAI subset. Fields outside it are ignored, but the ones that would change
    the answer's shape (stream, tools, logprobs) are refused by the route."""

    model_config = ConfigDict(strict=True, extra="allow")

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1)
    seed: int | None = SEED
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    logprobs: bool = False


def _tag(loc: tuple) -> str | None:
    """The union branch a loc ends in ('str', 'constrained-str', 'list[Message]', ...), or None."""
    last = loc[-1] if loc else None
    if isinstance(last, str) and (last in UNION_TAGS or last.startswith("constrained-")):
        return last
    return None


def pick(errors: list[dict]) -> dict | None:
    """The error to report. For a field of several types (a query: text or messages) pydantic reports every branch;
    a branch that does not match the input's type only says "should be a valid string", so the error inside the
    branch that matches is reported, or, when none matches, one error naming every type allowed."""
    mismatch = [e for e in errors if _tag(tuple(e.get("loc", ()))) and e.get("type", "").endswith("_type")]
    rest = [e for e in errors if e not in mismatch]
    if rest or not mismatch:
        return rest[0] if rest else None
    loc = tuple(mismatch[0]["loc"])
    same = [_tag(tuple(e["loc"])) for e in mismatch if tuple(e["loc"])[:-1] == loc[:-1]]
    kinds = [KINDS.get(t.removeprefix("constrained-"), t) for t in same]
    return {"loc": loc[:-1], "type": "union_type", "msg": f"Input should be {' or '.join(kinds)}",
            "input": mismatch[0].get("input")}


def field_name(loc: tuple | list) -> str:
    """('body', 'items', 0, 'responses') -> 'items[0].responses'; the body itself -> 'body'."""
    parts = [x for x in loc if x != "body"] if loc and loc[0] == "body" else list(loc)
    out = ""
    for x in parts:
        if isinstance(x, int):
            out += f"[{x}]"
        elif _tag((x,)) or (isinstance(x, str) and x.startswith("function-")):
            continue  # the union member pydantic tried: not a field
        else:
            out += ("." if out else "") + str(x)
    return out or "body"


def one_line(error: dict) -> tuple[str, str]:
    """A pydantic error (one of `RequestValidationError.errors()`) -> (field, message)."""
    name = field_name(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    if kind == "missing":
        return name, f"{name}: required field missing"
    if kind == "extra_forbidden":
        return name, f"{name}: unknown field (see docs/serve.md for the fields this route takes)"
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return name, f"{name}: {error.get('msg', 'invalid')}, got {got}"
