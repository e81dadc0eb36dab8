"""The prompts `Engine.generate` takes, as token ids: a string (tokenized), token ids, or a chat conversation.

A chat conversation is a list of {"role": str, "content": str} messages, put through the tokenizer's chat template
with the generation prompt added, as vLLM's `LLM.chat` does, so the model answers as the assistant (a conversation
the template refuses, such as a system turn for Gemma's, is an error about that prompt). One call may mix
the three kinds. An error about one prompt is a `spct.items.ItemError` named prompts[i] (its `index` is i).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jinja2 import TemplateError

from spct.items import ItemError

__all__ = ["chat_ids", "prompt_token_ids"]

_MESSAGE = "a chat message is a dict with a string 'role' and a string 'content'"


def _is_chat(p: object) -> bool:
    """A list whose entries include a dict (the rest are checked as messages then)."""
    return isinstance(p, (list, tuple)) and any(isinstance(m, Mapping) for m in p)


def _check_chat(i: int, messages: Sequence) -> None:
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ItemError(i, f"message {m} is {type(message).__name__} {message!r}; {_MESSAGE}",
                            name=f"prompts[{i}]")
        for key in ("role", "content"):
            if key not in message:
                raise ItemError(i, f"message {m} has no '{key}'; {_MESSAGE}", name=f"prompts[{i}]")
            if not isinstance(message[key], str):
                raise ItemError(i, f"message {m}'s '{key}' is {type(message[key]).__name__} {message[key]!r}; "
                                f"{_MESSAGE}", name=f"prompts[{i}]")


def chat_ids(tokenizer, messages: Sequence[Mapping], i: int = 0) -> list[int]:
    """Token ids of a chat conversation in the tokenizer's chat template, the generation prompt added.
    i: the prompt's position, for errors (prompts[i])."""
    _check_chat(i, messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ItemError(i, "the prompt is a chat conversation, but the tokenizer has no chat template; pass a "
                        "string or token ids instead", name=f"prompts[{i}]")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    except TemplateError as e:  # the template's own refusal (Gemma's: "System role not supported")
        raise ItemError(i, f"the tokenizer's chat template refuses the conversation: {e}", name=f"prompts[{i}]") \
            from None
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _one(tokenizer, p: object, i: int, vocab_size: int, context: int) -> list[int]:
    """One prompt's token ids, checked: not empty, ids in the vocabulary, shorter than the context."""
    name = f"prompts[{i}]"
    if isinstance(p, str):
        p = tokenizer(p).input_ids
    elif isinstance(p, torch.Tensor):
        p = p.tolist()
    elif _is_chat(p):
        p = chat_ids(tokenizer, p, i)
    elif not isinstance(p, Sequence) or isinstance(p, bytes):
        raise ItemError(i, f"the prompt is {type(p).__name__}; a prompt is a string, a list of token ids or a "
                        f"list of chat messages", name=name)
    p = list(p)
    if not p:
        raise ItemError(i, "the prompt is empty", name=name)
    bad = next((t for t in p if isinstance(t, bool) or not (isinstance(t, int) and 0 <= t < vocab_size)), None)
    if bad is not None:
        raise ItemError(i, f"the prompt holds token id {bad!r}, outside [0, {vocab_size})", name=name)
    if len(p) >= context:
        raise ItemError(i, f"the prompt has {len(p)} tokens, but the model's context is {context} tokens (at "
                        f"least one must be left to generate)", name=name)
    return p


def prompt_token_ids(tokenizer, prompts: object, vocab_size: int, context: int) -> list[list[int]]:
    """Each prompt's token ids (module docstring); an error names prompts[i] and what is allowed."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, token-id lists or chat conversations, got "
                         f"{type(prompts).__name__}")
    return [_one(tokenizer, p, i, vocab_size, context) for i, p in enumerate(prompts)]
