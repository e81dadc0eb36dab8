"""Accuracy of a GRM on a benchmark for several k: an item is right only if its best response's reward is strictly
above every other response's (a tie, or no valid sample, is wrong). Results by top-level category and overall."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from spct.eval.datasets import EvalItem

__all__ = ["correct", "evaluate", "plot", "table"]


def correct(rewards: list[float], best: int) -> bool:
    top = rewards[best]
    return not math.isnan(top) and all(r < top for i, r in enumerate(rewards) if i != best)


def evaluate(grm, items: list[EvalItem], ks: list[int], *, seed: int = 0, max_new_tokens: int = 512,
             batch_size: int = 16, meta_rm=None, k_meta: int | None = None, progress=None,
             force_scores: bool = False) -> dict:
    """{"k": {k: {"overall": acc, "categories": {name: acc}, "valid_rate": ..., "items": n}}}."""
    results = {}
    for k in ks:
        right, count = defaultdict(int), defaultdict(int)
        valid = 0
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            judged = grm.score_batch([(it.query, it.responses) for it in chunk], k=k, seed=seed,
                                     max_new_tokens=max_new_tokens, indices=range(start, start + len(chunk)),
                                     meta_rm=meta_rm, k_meta=k_meta, force_scores=force_scores)
            for it, j in zip(chunk, judged):
                ok = correct(j.rewards, it.best)
                for name in (it.category, "overall"):
                    right[name] += ok
                    count[name] += 1
                valid += sum(s.valid for s in j.samples)
            if progress is not None:
                progress(len(chunk))
        cats = {c: right[c] / count[c] for c in sorted(count) if c != "overall"}
        results[str(k)] = {"overall": right["overall"] / max(1, count["overall"]), "categories": cats,
                           "valid_rate": valid / max(1, k * len(items)), "items": len(items)}
    return {"k": results}


def table(results: dict) -> str:
    ks = list(results["k"])
    cats = sorted({c for r in results["k"].values() for c in r["categories"]})
    rows = [["k", *ks]]
    for c in [*cats, "overall", "valid samples"]:
        get = {"overall": lambda r: r["overall"], "valid samples": lambda r: r["valid_rate"]}.get(
            c, lambda r, c=c: r["categories"].get(c, math.nan))
        rows.append([c, *(f"{100 * get(results['k'][k]):.1f}%" for k in ks)])
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, width)) for r in rows)


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def plot(results: dict, path: Path, title: str) -> None:
    """Accuracy vs k, overall and per category (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib: pip install 'spct[eval]'") from None
    ks = [int(k) for k in results["k"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [100 * results["k"][str(k)]["overall"] for k in ks], marker="o", linewidth=2, label="overall")
    for c in sorted({c for r in results["k"].values() for c in r["categories"]}):
        ax.plot(ks, [100 * results["k"][str(k)]["categories"].get(c, math.nan) for k in ks], marker=".",
                linestyle="--", label=c)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples voted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
