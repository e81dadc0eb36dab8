"""Labelled training items for SPCT (docs/method.md section 4) and a programmatic teacher for rejective fine-tuning.

Items follow docs/design.md's format, one JSON object a line:
    {"id": str, "query": str | chat turns, "responses": [str, ...] (n >= 2), "best": int in [0, n)}
    {"id": str, "query": str | chat turns, "responses": [str], "label": 0 | 1}
plus "solution" (the gold worked solution) where the source has one.

Sources, from the training pool of shared/data/README.md only (never RMB BoN, RMB pairwise prompts shared with BoN,
GSM8K test, MATH-500 or LLMBar):
    gsm8k_pairs         GSM8K train: the gold short answer against a perturbed one (the demonstration task: "which of
                        two short answers to an arithmetic word problem is right")
    math_pairs          MATH problems outside MATH-500 whose answer is a plain integer, the same shape
    rmb_pairwise_train  RMB pairwise pairs whose first user turn occurs in no BoN item
Every random choice of an item is drawn from a generator seeded by (seed, item id): an item does not depend on
`limit` or on the items before it, and a new seed reorders the responses.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import spct.items
from spct.items import iter_jsonl, turns

__all__ = ["SOURCES", "arithmetic_pairs", "gsm8k_pairs", "last_boxed", "math_pairs", "perturb_answer", "read_items",
           "rmb_pairwise_train", "teacher_judgement", "write_items"]

Item = dict  # a training item as a JSON record (`spct.items.Item.to_dict()`)

# ---------------------------------------------------------------------------------------------- reading, writing


def read_items(path: str | Path) -> list[Item]:
    """Labelled items from a .jsonl or .jsonl.gz file (`spct.items.check`, require="label": an id, and "best" or a
    0/1 "label"); ValueError with the line number (and item id) on a bad line."""
    return [item.to_dict() for _, item in spct.items.read_items(path, require="label")]


def write_items(path: str | Path, items: Iterable[Item]) -> Path:
    """Write labelled items as JSONL (gzipped when the name ends in .gz), atomically. Every item is checked
    (require="label") before anything is written."""
    return spct.items.write_items(path, items, require="label")


# ---------------------------------------------------------------------------------------------- wrong answers

_WORDINGS = ("The answer is {}.", "The final answer is {}.", "So the answer is {}.", "Answer: {}",
             "The result is {}.", "It comes to {}.")


def _off_by(value: int, rng: random.Random) -> int:
    d = rng.randint(1, 3)
    return value + d if rng.random() < 0.5 or 0 <= value < d else value - d


def _digit_slip(value: int, rng: random.Random) -> int:
    """One digit off by one, or two neighbouring digits swapped (never creating a leading zero)."""
    digits = list(str(abs(value)))
    i = rng.randrange(len(digits))
    if i + 1 < len(digits) and digits[i] != digits[i + 1] and (i > 0 or digits[1] != "0") and rng.random() < 0.5:
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
    else:
        old = int(digits[i])
        step = rng.choice((-1, 1))
        if not 0 <= old + step <= 9 or (old + step == 0 and i == 0 and len(digits) > 1):
            step = -step
        digits[i] = str(old + step)
    wrong = int("".join(digits))
    return -wrong if value < 0 else wrong


def _double(value: int, rng: random.Random) -> int:
    return 2 * value


def _halve(value: int, rng: random.Random) -> int | None:
    return value // 2 if value % 2 == 0 else None


_PERTURBATIONS = (_off_by, _digit_slip, _double, _halve)


def perturb_answer(value: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by 1-3, a digit slip, or the value doubled or halved (chosen by `rng`).
    Never `value`; non-negative when `value` is. Off-by-a-little stands in when the chosen kind does not apply."""
    wrong = rng.choice(_PERTURBATIONS)(value, rng)
    if wrong is None or wrong == value or (value >= 0 > wrong):
        wrong = _off_by(value, rng)  # always valid: it moves by 1-3 and never below zero from a non-negative value
    return wrong


# ---------------------------------------------------------------------------------------------- sources

_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. "48/2 = <<48/2=24>>24"
_GSM8K_GOLD = "#### "
_PLAIN_INT = re.compile(r"-?\d+")


def _rng(seed: int, id_: str) -> random.Random:
    return random.Random(f"{seed}:{id_}")  # str seeds hash with SHA-512: the same on every run and platform


def _pair(id_: str, query, good: str, bad: str, rng: random.Random, **extra) -> Item:
    best = rng.randrange(2)
    responses = [good, bad] if best == 0 else [bad, good]
    return {"id": id_, "query": query, "responses": responses, "best": best, **extra}


def _answer_pair(id_: str, query: str, gold: str, solution: str, seed: int) -> Item:
    """The gold short answer against a perturbed one, in one seeded wording, in a seeded order."""
    rng = _rng(seed, id_)
    value = int(gold.replace(",", ""))
    written = "{:,}" if "," in gold else "{}"  # keep the thousands separators the dataset wrote
    wrong = perturb_answer(value, rng)
    wording = rng.choice(_WORDINGS)
    return _pair(id_, query, wording.format(gold), wording.format(written.format(wrong)), rng, solution=solution)


def gsm8k_pairs(path: str | Path, *, seed: int = 0, limit: int | None = None) -> list[Item]:
    """GSM8K train.jsonl -> one pair item per problem: the gold short answer ("The answer is 72.") and a perturbed
    one; "solution" is the gold worked solution without the <<...>> calculator annotations."""
    path = Path(path)

    def items():
        for lineno, r in iter_jsonl(path):
            if _GSM8K_GOLD not in r.get("answer", ""):
                raise ValueError(f"{path}:{lineno}: a GSM8K answer must end in '#### <gold>'")
            solution = _CALCULATOR.sub("", r["answer"])
            gold = solution.rsplit(_GSM8K_GOLD, 1)[1].strip()
            yield _answer_pair(f"gsm8k-{lineno}", r["question"], gold, solution, seed)

    return list(itertools.islice(items(), limit))


_STORIES = [  # (question, operator): one-step word problems a small model can check in one line
    ("{name} has {a} marbles and wins {b} more. How many marbles does {name} have now?", "+"),
    ("A shelf holds {a} books. {name} adds {b} books. How many books are on the shelf?", "+"),
    ("{name} had {a} stickers and gave away {b}. How many stickers are left?", "-"),
    ("A bus carries {a} people; {b} get off at the first stop. How many are still on the bus?", "-"),
    ("{name} buys {a} boxes with {b} pencils in each. How many pencils is that?", "*"),
    ("There are {a} rows of {b} chairs. How many chairs are there?", "*"),
]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_pairs(n: int, *, seed: int = 0, max_operand: int = 20) -> list[Item]:
    """n generated one-step word problems (add, subtract, multiply numbers up to max_operand; no negative
    results), each with its gold short answer against a perturbed one, and a one-line "solution" ("a + b = c",
    then "#### c") for the teacher: the demonstration's task, within a small model's reach."""
    if n < 0 or max_operand < 2:
        raise ValueError(f"need n >= 0 and max_operand >= 2, got n = {n}, max_operand = {max_operand}")
    items = []
    for i in range(n):
        id_ = f"arith-{i}"
        rng = _rng(seed, id_ + ":problem")
        story, op = rng.choice(_STORIES)
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        gold = _OPS[op](a, b)
        question = story.format(name=rng.choice(_NAMES), a=a, b=b)
        items.append(_answer_pair(id_, question, str(gold), f"{a} {op} {b} = {gold}\n#### {gold}", seed))
    return items


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text`, braces balanced; None when there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    return None if start < 0 else _boxed_at(text, start)[0]


def _boxed_at(text: str, start: int) -> tuple[str | None, int]:
    """(content, index after the closing brace) of the \\boxed{ at `start`; (None, len) when unclosed."""
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[start + len("\\boxed{") : j], j + 1
    return None, len(text)


def math_pairs(path: str | Path, *, exclude_path: str | Path, seed: int = 0, limit: int | None = None) -> list[Item]:
    """MATH problems whose "problem" is not in `exclude_path` (MATH-500) and whose last \\boxed{...} answer is a plain
    integer -> pair items like `gsm8k_pairs` (the others are skipped); "solution" is the MATH solution."""
    path = Path(path)
    excluded = {r["problem"].strip() for _, r in iter_jsonl(Path(exclude_path))}

    def items():
        for lineno, r in iter_jsonl(path):
            gold = last_boxed(r["solution"])
            if r["problem"].strip() in excluded or gold is None or not _PLAIN_INT.fullmatch(gold.strip()):
                continue
            yield _answer_pair(f"math-{lineno}", r["problem"], gold.strip(), r["solution"], seed)

    return list(itertools.islice(items(), limit))


def _first_user_turn(conversation: Sequence[dict]) -> str:
    return next((t["content"] for t in conversation if t["role"] == "user"), "")


def rmb_pairwise_train(pairwise_path: str | Path, bon_path: str | Path, *, seed: int = 0,
                       limit: int | None = None) -> list[Item]:
    """RMB pairwise pairs whose first user turn occurs in no BoN item (the rest are evaluation data) -> pair items.
    The query is the conversation as chat turns, as `spct.eval.datasets` reads RMB (the last user turn is the
    question); chosen and reject appear in a seeded order."""
    bon_prompts = {_first_user_turn(r["conversation_input"]) for _, r in iter_jsonl(Path(bon_path))}

    def items():
        for _, r in iter_jsonl(Path(pairwise_path)):
            conversation = r["conversation_input"]
            if _first_user_turn(conversation) in bon_prompts:
                continue
            id_ = f"rmb-{r['pair_uid']}"
            yield _pair(id_, turns(conversation), r["chosen"]["answer"], r["reject"]["answer"], _rng(seed, id_))

    return list(itertools.islice(items(), limit))


SOURCES: dict[str, Callable[..., list[Item]]] = {
    "gsm8k": gsm8k_pairs, "math": math_pairs, "rmb-pairwise": rmb_pairwise_train}

# ---------------------------------------------------------------------------------------------- teacher

_CORRECTNESS = ("Correctness of the final answer", "Final answer accuracy", "Numerical correctness")
_OTHER_CRITERIA = (
    "Faithfulness to the question (Weight: {w}%): it gives the quantity the question asks for, not an "
    "intermediate value.",
    "Consistency with the given quantities (Weight: {w}%): the number must follow from the values and operations "
    "the problem describes.",
    "Clarity (Weight: {w}%): the final answer is stated directly and unambiguously.",
    "Completeness (Weight: {w}%): one definite answer, with no missing or extra parts.",
)
_WEIGHTS = ((70, 30), (60, 40), (80, 20), (60, 25, 15), (50, 30, 20), (70, 20, 10))
_INTROS = ("Solving the problem step by step:", "First, work the problem out:", "The problem works out as follows:",
           "Let me solve it before comparing the responses.")
_CONCLUSIONS = ("So the correct answer is {}.", "This gives {} as the correct answer.",
                "The correct result is therefore {}.")
_RIGHT = ("Response {i} gives {x}, which matches the correct answer.", "Response {i} states {x}; this agrees with the "
          "solution.", "Response {i} answers {x}, which is correct.")
_WRONG = ("Response {i} gives {x}, which does not match {gold}{why}.", "Response {i} states {x}, but the correct "
          "answer is {gold}{why}.", "Response {i} answers {x}, which is wrong{why}.")
_VERDICTS = ("Only Response {b} is correct, so Response {b} scores clearly higher.",
             "Only Response {b} reaches the right number, so it earns the higher score.",
             "Since the final answer decides this task, Response {b} is better.")
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.DOTALL)  # MATH's Asymptote drawings
_FINAL_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?")


def _unboxed(text: str) -> str:
    """`text` with every \\boxed{x} written as x: the analysis must hold no score group before the scores line (a
    truncated generation would otherwise read the answer as its scores)."""
    out, pos = [], 0
    while (start := text.find("\\boxed{", pos)) >= 0:
        content, end = _boxed_at(text, start)
        if content is None:
            break
        out += [text[pos:start], _unboxed(content)]
        pos = end
    return "".join(out) + text[pos:]


def _solution_steps(solution: str) -> list[str]:
    """GSM8K: one step a line, without the '#### gold' line; MATH: one step a paragraph, drawings dropped."""
    if _GSM8K_GOLD in solution:
        parts = solution.rsplit(_GSM8K_GOLD, 1)[0].split("\n")
    else:
        parts = re.split(r"\n\s*\n", _ASY.sub("", solution))
    return [" ".join(_unboxed(p).split()) for p in parts if p.strip()]


def _gold_answer(solution: str) -> str | None:
    if _GSM8K_GOLD in solution:
        return solution.rsplit(_GSM8K_GOLD, 1)[1].strip()
    return last_boxed(solution)


def _as_int(text: str | None) -> int | None:
    text = None if text is None else text.strip().replace(",", "")
    return int(text) if text and _PLAIN_INT.fullmatch(text) else None


def _final_number(response: str) -> int | None:
    numbers = _FINAL_NUMBER.findall(response)
    return int(numbers[-1].replace(",", "")) if numbers else None


def _why(wrong: int | None, gold: int) -> str:
    """A guess at the slip behind a wrong number, for the analysis ('' when none fits)."""
    if wrong is None:
        return ""
    if wrong == 2 * gold:
        return " (the value looks doubled)"
    if 2 * wrong == gold:
        return " (the value looks halved)"
    if abs(wrong - gold) <= 3:
        return f" (off by {abs(wrong - gold)})"
    a, b = str(abs(wrong)), str(abs(gold))
    if len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 2:
        return " (a digit slipped)"
    return ""


def _band(a: int, b: int) -> str:
    return f"{a}" if a == b else f"{a}-{b}"


def _criteria(rng: random.Random, good: tuple[int, int], bad: tuple[int, int]) -> list[str]:
    weights = rng.choice(_WEIGHTS)
    first = (f"{rng.choice(_CORRECTNESS)} (Weight: {weights[0]}%): {_band(*good)} if the final number equals the "
             f"true result of the problem; {_band(*bad)} if it does not.")
    others = rng.sample(_OTHER_CRITERIA, len(weights) - 1)
    return [first] + [c.format(w=w) for c, w in zip(others, weights[1:])]


def _verdict(rng: random.Random, i: int, final: int | None, gold: int, right: bool) -> str:
    x = "no number" if final is None else final
    if right:
        return rng.choice(_RIGHT).format(i=i + 1, x=x)
    return rng.choice(_WRONG).format(i=i + 1, x=x, gold=gold, why=_why(final, gold))


def teacher_judgement(item: Item, *, seed: int = 0, score_range: tuple[int, int] = (1, 10),
                      brief: bool = False) -> str:
    """A GRM judgement of a GSM8K / MATH pair item written from its known solution, in the output format of the
    pointwise template: "Specific Criteria:" (2-3 weighted criteria), "Analysis:" (the solution's steps, then each
    response's final number against the gold), "Scores: \\boxed{a, b}" with the best response strictly highest.
    Wording, weights and scores vary with (seed, item id); the same seed gives the same text.

    brief: the same three parts in about a third of the tokens (one criterion, the steps, one line per response):
    what a small model can learn to write in a short fine-tune, and cheaper to sample k times."""
    id_ = item.get("id")
    lo, hi = score_range
    if type(lo) is not int or type(hi) is not int or lo >= hi:
        raise ValueError(f"score_range must be two ints lo < hi, got {score_range!r}")
    responses, best, solution = item.get("responses", []), item.get("best"), item.get("solution")
    if len(responses) < 2 or type(best) is not int or not 0 <= best < len(responses) or not solution:
        raise ValueError(f"item {id_!r}: the teacher needs n >= 2 responses, 'best' and a 'solution'")
    gold = _as_int(_gold_answer(solution))
    if gold is None:
        raise ValueError(f"item {id_!r}: the solution's final answer {_gold_answer(solution)!r} is not an integer")
    finals = [_final_number(r) for r in responses]
    if finals[best] != gold or gold in finals[:best] + finals[best + 1 :]:
        raise ValueError(f"item {id_!r}: final numbers {finals} do not single out response {best} as the gold {gold}")
    rng = random.Random(f"{seed}:teacher:{id_}")
    span = hi - lo
    good, bad = (hi - span // 4, hi), (lo, lo + span // 3)  # disjoint for every span >= 1: good wins strictly
    if brief:
        scores = [rng.randint(*good) if i == best else rng.randint(*bad) for i in range(len(responses))]
        lines = [f"Response {i + 1}: {'no number' if x is None else x}, {'correct' if i == best else 'wrong'}."
                 for i, x in enumerate(finals)]
        return (f"Specific Criteria:\n1. Correctness (Weight: 100%): {_band(*good)} if the final number is the true "
                f"result; {_band(*bad)} if not.\n\nAnalysis:\n" + "\n".join(_solution_steps(solution)) + "\n"
                + "\n".join(lines) + "\n\nScores: \\boxed{" + ", ".join(map(str, scores)) + "}")
    criteria = _criteria(rng, good, bad)
    steps = [f"Step {k}: {s}" for k, s in enumerate(_solution_steps(solution), 1)]
    verdicts = [_verdict(rng, i, x, gold, i == best) for i, x in enumerate(finals)]
    analysis = [rng.choice(_INTROS), *steps, rng.choice(_CONCLUSIONS).format(gold), "",
                *(f"- {v}" for v in verdicts), rng.choice(_VERDICTS).format(b=best + 1)]
    scores = [rng.randint(*good) if i == best else rng.randint(*bad) for i in range(len(responses))]
    return ("Specific Criteria:\n" + "\n".join(f"{k}. {c}" for k, c in enumerate(criteria, 1)) + "\n\n"
            + "Analysis:\n" + "\n".join(analysis) + "\n\n"
            + "Scores: \\boxed{" + ", ".join(map(str, scores)) + "}")
