"""The seed papers' headline orderings, measured on a zoo build with the eval harness.

Each `Comparison` lists systems in the order a paper claims (weakest first) and the relation between
neighbours: "<" the next system is better, "≲" it is not worse by more than the comparison's stated margin.
Each neighbour pair is judged by a paired bootstrap over the task's prompts (`eval.verdicts`): holds, fails or
inconclusive. Systems are evaluated once per (system, task) and shared between comparisons.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelops.eval.harness import SystemSpec, evaluate
from modelops.eval.report import TaskResult
from modelops.eval.tasks import TaskSpec, zoo_task
from modelops.eval.verdicts import Claim, combine
from modelops.runtime.zoo_names import zoo_roles

logger = logging.getLogger(__name__)

SAMPLED_RULES = ("cbs", "bon")  # the searches sample (T 0.7, top-k 50); every other system is greedy
EXACT_MARGIN = 0.05  # "≲" on exact-match tasks: not more than 5 points worse
REWARD_MARGIN = 0.25  # "≲" on the review reward (gold reward in [−3, 2]): a twentieth of its range


@dataclass
class Comparison:
    paper: str
    task: str
    systems: list[str]  # names into the system table, weakest first as the paper claims
    relations: list[str]  # between neighbours: "<" (better) or "≲" (not worse by more than `margin`)
    note: str = ""
    margin: float = 0.0  # the non-inferiority margin of "≲", in the task's metric


@dataclass
class OrderingResult:
    comparison: Comparison
    results: list[TaskResult]
    verdict: str  # "holds: …", "fails: …" or "inconclusive: …", with every pair's effect and bounds
    seconds: float = 0.0
    claims: list[Claim] = field(default_factory=list)  # one per neighbour pair: what the verdict was computed from
    sampled: bool = False  # a system of it samples (a search), so the sampling seed changes it

    def to_dict(self) -> dict[str, Any]:
        return {
            "paper": self.comparison.paper,
            "task": self.comparison.task,
            "ordering": ordering_text(self.comparison),
            "verdict": self.verdict,
            "systems": [r.row() for r in self.results],
            "note": self.comparison.note,
        }


def ordering_text(c: Comparison) -> str:
    parts = [c.systems[0]]
    for rel, name in zip(c.relations, c.systems[1:], strict=True):
        parts += [rel, name]
    margin = f" (≲: within {c.margin:g})" if "≲" in c.relations else ""
    return " ".join(parts) + margin


def values(result: TaskResult) -> list[float]:
    """The per-prompt values of a cell, in the task's row order (what a paired test pairs)."""
    return [float(r["value"]) for r in sorted(result.records, key=lambda r: r["index"])]


def pair_claims(c: Comparison, results: list[TaskResult]) -> list[Claim]:
    """One "b better than a" (or "not worse, within the margin") claim per neighbour pair, on per-prompt values."""
    claims = []
    for rel, a, b in zip(c.relations, results, results[1:], strict=False):
        if rel not in ("<", "≲"):
            raise ValueError(f"unknown relation {rel!r}")
        margin = c.margin if rel == "≲" else 0.0
        claims.append(Claim("better", [values(a), values(b)], margin, f"{b.system} − {a.system}"))
    return claims


def verdict(c: Comparison, results: list[TaskResult], *, seed: int = 0) -> str:
    """The ordering's verdict: every neighbour pair by a paired bootstrap; fails if one fails, holds if all
    hold, else inconclusive. Each pair's effect mean(b − a) and its one-sided 95% bounds follow."""
    return judged(pair_claims(c, results), seed=seed)


def judged(claims: list[Claim], *, seed: int = 0) -> str:
    """The combined verdict of an ordering's pair claims, each pair's effect and bounds after it."""
    verdicts = [claim.verdict(seed) for claim in claims]
    details = [f"{cl.label} {v.effect:+.3g} [{v.low:+.3g}, {v.high:+.3g}] vs {v.threshold:+g}"
               for cl, v in zip(claims, verdicts, strict=True)]  # fmt: skip
    return f"{combine([v.outcome for v in verdicts])}: " + "; ".join(details)


def zoo_systems(zoo: Path, tasks: list[str], *, search_n: int = 16) -> dict[str, SystemSpec]:
    """Every system the comparisons need, by name, resolved inside one zoo build."""
    r = {k: str(v) for k, v in zoo_roles(zoo).items()}
    systems: dict[str, SystemSpec] = {"large base": SystemSpec("large base", r["large_base"])}
    for t in (t for t in tasks if t != "review"):
        fuse = {"large": r["large_base"], "small_base": r["small_base"], "experts": [r[f"sft_{t}"]]}
        systems[f"small SFT ({t})"] = SystemSpec(f"small SFT ({t})", r[f"sft_{t}"])
        systems[f"up-scaled ({t})"] = SystemSpec(f"up-scaled ({t})", rule="eft", weights=[1.0], **fuse)
        systems[f"proxy α=1 ({t})"] = SystemSpec(f"proxy α=1 ({t})", rule="proxy", weights=[1.0], **fuse)
        systems[f"DLF ({t})"] = SystemSpec(f"DLF ({t})", rule="dlf", **fuse)
        systems[f"large SFT ({t})"] = SystemSpec(f"large SFT ({t})", r[f"large_sft_{t}"])
    skills = [t for t in tasks if t != "review"]
    if len(skills) > 1:
        every = [r[f"sft_{t}"] for t in skills]
        systems["DLF (all experts)"] = SystemSpec(
            "DLF (all experts)", r["large_base"], r["small_base"], every, rule="dlf"
        )
        equal = [1.0 / len(every)] * len(every)
        systems["fixed (all experts)"] = SystemSpec(
            "fixed (all experts)", r["large_base"], r["small_base"], every, rule="fixed", weights=equal
        )
    if "review" in tasks:
        guide = {"large": r["large_sft_review"], "small_base": r["sft_review"], "experts": [r["dpo_full"]]}
        systems["large SFT (review)"] = SystemSpec("large SFT (review)", r["large_sft_review"])
        systems["EFT (review)"] = SystemSpec("EFT (review)", rule="eft", weights=[1.0], **guide)
        systems[f"best-of-{search_n}"] = SystemSpec(f"best-of-{search_n}", rule="bon", n=search_n, **guide)
        systems["CBS(4,4,5)"] = SystemSpec("CBS(4,4,5)", rule="cbs", beam_width=4, successors=4, chunk_len=5, **guide)
    return systems


def zoo_comparisons(tasks: list[str], *, search_n: int = 16) -> list[Comparison]:
    out: list[Comparison] = []
    skills = [t for t in tasks if t != "review"]
    if "facts" in skills:
        out.append(
            Comparison(
                "EFT / up-scaling (Mitchell et al. 2023)", "facts",
                ["small SFT (facts)", "up-scaled (facts)", "large SFT (facts)"], ["<", "≲"],
                "knowledge-heavy task: the large base brings what the small SFT lacks", EXACT_MARGIN,
            )
        )  # fmt: skip
    for t in skills:
        out.append(
            Comparison(
                "DLF (Fan et al. 2024) vs proxy-tuning", t,
                [f"small SFT ({t})", f"proxy α=1 ({t})", f"DLF ({t})", f"large SFT ({t})"], ["<", "≲", "<"],
                "proxy-tuning α = 1 is the same formula as up-scaling (and gives the same numbers)", EXACT_MARGIN,
            )
        )  # fmt: skip
    if len(skills) > 1:
        for t in skills:
            out.append(
                Comparison("DLF multi-task (all experts at once vs the task's expert)", t,
                           [f"DLF ({t})", "DLF (all experts)"], ["≲"], "one fused system serves every task",
                           EXACT_MARGIN)
            )  # fmt: skip
            out.append(
                Comparison("DLF per-step weights vs fixed equal weights (all experts)", t,
                           ["fixed (all experts)", "DLF (all experts)"], ["≲"], "behaviour interpolation, no search",
                           EXACT_MARGIN)
            )  # fmt: skip
    if "review" in tasks:
        out.append(
            Comparison(
                "Weak-to-strong search (Zhou et al. 2024)", "review",
                ["large SFT (review)", "EFT (review)", f"best-of-{search_n}", "CBS(4,4,5)"], ["<", "≲", "≲"],
                f"guided by small DPO − small SFT; {search_n} samples per prompt for both searches", REWARD_MARGIN,
            )
        )  # fmt: skip
    return out


@dataclass
class OrderingRun:
    results: list[OrderingResult] = field(default_factory=list)
    cells: dict[tuple[str, str], TaskResult] = field(default_factory=dict)


def measure_orderings(
    zoo: Path,
    tasks: list[str] | None = None,
    *,
    limit: int | None = None,
    search_n: int = 16,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
    progress: Any = None,
    only_sampled: bool = False,
) -> OrderingRun:
    """Evaluate every system once per task it appears in, then judge each comparison. `seed`: the searches'
    sampling seed; `only_sampled`: just the comparisons with a sampled system (what another seed can change)."""
    from modelops.decode.sampling import SamplingConfig

    tasks = tasks or ["facts", "addition", "review"]
    systems = zoo_systems(zoo, tasks, search_n=search_n)
    sampled = lambda c: any(systems[n].rule in SAMPLED_RULES for n in c.systems)  # noqa: E731
    comparisons = [c for c in zoo_comparisons(tasks, search_n=search_n) if sampled(c) or not only_sampled]
    specs: dict[str, TaskSpec] = {t: zoo_task(t, zoo) for t in tasks}
    run = OrderingRun()
    for c in comparisons:
        start = time.perf_counter()
        for name in c.systems:
            if (name, c.task) in run.cells:
                continue
            system = systems[name]
            search = system.rule in SAMPLED_RULES
            # searches sample (the papers' T 0.7, top-k 50); everything else is greedy, as the zoo scores itself
            sampling = SamplingConfig(temperature=0.7 if search else 0.0, top_k=50 if search else 0, seed=seed)
            report = evaluate({name: system}, [specs[c.task]], sampling, batch_size, limit, device=device,
                              progress=progress)  # fmt: skip
            run.cells[(name, c.task)] = replace(report.results[0])
        results = [run.cells[(n, c.task)] for n in c.systems]
        claims = pair_claims(c, results)
        seconds = time.perf_counter() - start
        run.results.append(OrderingResult(c, results, judged(claims), seconds, claims, sampled(c)))
    return run
