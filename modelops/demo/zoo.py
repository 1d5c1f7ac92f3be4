"""`modelops demo --preset mini|full`: the whole toolkit on the zoo, one table of what each paper claims and what
happened here.

Weight half: ExPO with α picked on half of the review prompts and judged on the other half; a task-arithmetic
merge of two skill experts; a LoRA extracted from the large fine-tune and applied back. Decode half: the
orderings of `modelops.eval.orderings` (EFT, proxy-tuning, DLF, weak-to-strong search) and speculative EFT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelops import api
from modelops.demo.report import DemoLine, DemoReport

logger = logging.getLogger(__name__)

KEEP = 0.9  # merges keep, and LoRA recovers, at least this share of the fine-tune's score / gain
SPEED_ROUNDS = 5  # paired timing rounds behind the speculative speed verdict


def _fmt(results: list[Any]) -> str:
    out = []
    for r in results:
        fl = f" (fluent {r.fluency.mean:.0%})" if getattr(r, "fluency", None) is not None else ""
        out.append(f"{r.system} {r.mean:.3g}{fl}")
    return ", ".join(out)


def _evaluate(systems: dict[str, Any], task: Any, limit: int | None, device: str) -> list[Any]:
    report = api.evaluate(systems, [task], max_new_tokens=128, batch_size=32, limit=limit, device=device)
    return list(report.results)


def run_zoo_demo(
    preset: str = "mini",
    *,
    seed: int = 0,
    workdir: Path = Path("modelops-demo"),
    limit: int | None = None,
    device: str = "cpu",
    zoo_progress: Any = None,
    on_line: Callable[[DemoLine], None] | None = None,
    sample_seed: int = 0,
) -> DemoReport:
    """Build (or reuse) the zoo, then run every operation and every ordering on it (the searches sample with
    `sample_seed`; everything else is greedy)."""
    start = time.perf_counter()
    t0 = time.perf_counter()
    zoo = api.build_zoo(preset, seed, progress=zoo_progress)
    report = DemoReport(zoo, preset)
    report.details["rows_per_task"] = limit or "all"
    roles = {k: str(v) for k, v in api.zoo_roles(zoo).items()}
    outputs = workdir / f"zoo-{preset}-s{seed}"
    outputs.mkdir(parents=True, exist_ok=True)

    def add(line: DemoLine) -> None:
        report.lines.append(line)
        if on_line:
            on_line(line)

    add(DemoLine("setup", f"zoo build ({preset}, seed {seed})", "-", str(zoo), "ready", time.perf_counter() - t0))
    for line in _expo_lines(zoo, roles, outputs, limit, device, report.details):
        add(line)
    add(_merge_line(zoo, roles, outputs, limit, device))
    add(_lora_line(zoo, roles, outputs, limit, device))
    for line in decode_lines(zoo, limit, device, report.details, sample_seed=sample_seed):
        add(line)
    add(_speculative_line(roles, limit, device, zoo))
    report.seconds = time.perf_counter() - start
    return report


def _expo_lines(
    zoo: Path, roles: dict[str, str], outputs: Path, limit: int | None, device: str, details: dict
) -> list[DemoLine]:
    """ExPO: α picked on the even review prompts, judged on the odd ones, for partial and full DPO.

    ExPO proper is α > 0 (the paper's claim); `--alpha auto` may also pick α ≤ 0 (interpolation toward the SFT),
    reported on its own line.
    """
    review = api.zoo_task("review", zoo)
    dev, test = replace(review, rows=review.rows[0::2]), replace(review, rows=review.rows[1::2])
    lines, found = [], {}
    for which in ("dpo_partial", "dpo_full"):
        t0 = time.perf_counter()
        points = api.alpha_sweep(roles["sft_review"], roles[which], list(api.DEFAULT_ALPHA_GRID), dev, device=device)
        details[f"expo_curve[{which}] (dev half)"] = [p.to_dict() for p in points]
        api.alpha_curve_png(details[f"expo_curve[{which}] (dev half)"], outputs / f"expo-curve-{which}.png",
                            title=f"ExPO α curve, {which} (review, dev half)", metric="gold reward")  # fmt: skip
        chosen = {
            "ExPO": api.best_alpha([p for p in points if p.alpha > 0]).alpha,
            "α auto": api.best_alpha(points).alpha,
        }
        systems = {which: api.SystemSpec(which, roles[which])}
        for label, alpha in chosen.items():
            target = outputs / f"expo-{which}-a{alpha:g}"
            api.extrapolate(roles["sft_review"], roles[which], target, alpha=alpha, overwrite=True)
            name = f"{which}+{label}(α={alpha:g})"
            systems[name] = api.SystemSpec(name, str(target))
        found[which] = results = _evaluate(systems, test, limit, device)  # [dpo, +ExPO, +α auto]
        seconds = time.perf_counter() - t0
        task = "review (gold reward, test half)"
        if which == "dpo_full":
            partial_expo, full = found["dpo_partial"][1], results[0]
            lines.append(_better_line("ExPO (Zheng et al. 2024): DPO(full) < DPO(partial)+ExPO", task, full,
                                      partial_expo, seconds))  # fmt: skip
        lines.append(_better_line(f"ExPO: {which} < {which}+ExPO (α > 0)", task, *results[:2], seconds))
        auto = _better_line(f"extrapolate --alpha auto (any sign): {which} < {which}+α*", task, results[0],
                            results[2], 0.0)  # fmt: skip
        if chosen["α auto"] == 0:  # the same model twice: nothing was tested (pooled over seeds it counts as 0)
            auto.verdict = "inconclusive: α* = 0, no change"
        lines.append(auto)
    return lines


def _better_line(claim: str, task: str, a: Any, b: Any, seconds: float) -> DemoLine:
    """b better than a on the same prompts: paired bootstrap, one-sided 95%."""
    test = api.Claim("better", [api.cell_values(a), api.cell_values(b)])  # the systems' α may differ per seed
    return DemoLine("weights", claim, task, _fmt([a, b]), test.verdict().text(), seconds, [test])


def _merge_line(zoo: Path, roles: dict[str, str], outputs: Path, limit: int | None, device: str) -> DemoLine:
    """Task arithmetic (λ = 0.5) and TIES of the large facts and addition fine-tunes: one model, both skills."""
    t0 = time.perf_counter()
    experts = [roles["large_sft_facts"], roles["large_sft_addition"]]
    merged: dict[str, Path] = {}
    for name, method, params, weight in (
        ("TA λ=0.5", "task_arithmetic", {}, 0.5),
        ("TIES", "ties", {"density": 0.5}, 1.0),
    ):
        recipe = {
            "merge_method": method, "base_model": roles["large_base"], "parameters": params,
            "models": [{"model": m, "parameters": {"weight": weight}} for m in experts],
        }  # fmt: skip
        merged[name] = outputs / f"merge-{method}-facts+addition"
        api.merge(recipe, merged[name], overwrite=True)
    cells, claims = [], []
    for task in ("facts", "addition"):
        systems = {f"expert ({task})": api.SystemSpec(f"expert ({task})", roles[f"large_sft_{task}"])}
        systems |= {name: api.SystemSpec(name, str(folder)) for name, folder in merged.items()}
        results = _evaluate(systems, api.zoo_task(task, zoo), limit, device)
        cells.append((task, results))
        expert = api.cell_values(results[0])
        claims += [api.Claim("share", [expert, api.cell_values(r)], KEEP, f"{r.system} on {task}") for r in results[1:]]
    values = "; ".join(f"{t}: {_fmt(r)}" for t, r in cells)
    return DemoLine("weights", f"merge (task arithmetic, TIES) of two large fine-tunes keeps ≥ {KEEP:.0%} of each "
                    "expert's score", "facts; addition", values, combined(claims), time.perf_counter() - t0, claims)  # fmt: skip


def combined(claims: list[Any]) -> str:
    """Several claims in one line: fails if one fails, holds if all hold, else inconclusive; each one's detail."""
    verdicts = [c.verdict() for c in claims]
    details = " | ".join(f"{c.label}: {v.text()}" for c, v in zip(claims, verdicts, strict=True))
    return f"{api.combine([v.outcome for v in verdicts])}: {details}"


def _lora_line(zoo: Path, roles: dict[str, str], outputs: Path, limit: int | None, device: str) -> DemoLine:
    """extract-lora from the large facts fine-tune, apply it back to the large base, evaluate."""
    t0 = time.perf_counter()
    adapter, merged = outputs / "lora-large-facts-r16", outputs / "lora-large-facts-r16-applied"
    extracted = api.extract_lora(roles["large_base"], roles["large_sft_facts"], adapter, rank=16, overwrite=True)
    api.apply_lora(roles["large_base"], str(adapter), merged, overwrite=True)
    results = _evaluate(
        {
            "large base": api.SystemSpec("large base", roles["large_base"]),
            "base+LoRA r16": api.SystemSpec("base+LoRA r16", str(merged)),
            "large SFT": api.SystemSpec("large SFT", roles["large_sft_facts"]),
        },
        api.zoo_task("facts", zoo), limit, device,
    )  # fmt: skip
    test = api.Claim("recovered", [api.cell_values(r) for r in results], KEEP, "base+LoRA r16")
    verdict = test.verdict().text()
    err = extracted.summary.get("overall_rel_error")
    values = _fmt(results) + (f"; weight error {err:.3f}" if err is not None else "")
    return DemoLine("weights", f"extract-lora r16 → apply-lora recovers ≥ {KEEP:.0%} of the fine-tune's gain",
                    "facts (exact match)", values, verdict, time.perf_counter() - t0, [test])  # fmt: skip


def decode_lines(
    zoo: Path, limit: int | None, device: str, details: dict, *, sample_seed: int = 0, only_sampled: bool = False
) -> list[DemoLine]:
    """The papers' orderings; `only_sampled`: just those a sampling seed can change (the searches)."""
    run = api.measure_orderings(zoo, limit=limit, device=device, seed=sample_seed, only_sampled=only_sampled)
    details["orderings"] = [r.to_dict() for r in run.results]
    lines = []
    for r in run.results:
        claim = f"{r.comparison.paper}: {api.ordering_text(r.comparison)}"
        lines.append(DemoLine("decode", claim, r.comparison.task, _fmt(r.results), r.verdict, r.seconds, r.claims,
                              r.sampled))  # fmt: skip
    return lines


def _speculative_line(roles: dict[str, str], limit: int | None, device: str, zoo: Path) -> DemoLine:
    """EFT on review (large SFT + small DPO − small SFT), plain and with the expert drafting 4 tokens."""
    t0 = time.perf_counter()
    prompts = [r["prompt"] for r in api.zoo_task("review", zoo).rows[: limit or None]]
    sampling = api.SamplingConfig(max_new_tokens=16)
    members = (roles["large_sft_review"], roles["sft_review"], [roles["dpo_full"]])
    plain = api.CoDecoder.load(*members, api.FusionRule("eft"), device=device)
    spec = api.CoDecoder(plain.members, api.FusionRule("eft", speculative=4))  # the same loaded models
    ratios, tokens, rates = [], [], []
    for _ in range(SPEED_ROUNDS):  # paired rounds: plain then speculative, the machine's drift shared
        pair = []
        for decoder in (plain, spec):
            start = time.perf_counter()
            gens = decoder.generate(prompts, sampling, batch_size=1)
            pair.append(sum(g.num_tokens for g in gens) / (time.perf_counter() - start))
            tokens.append([g.token_ids for g in gens])
        rates.append(pair)
        ratios.append(pair[1] / pair[0])
    same = all(t == tokens[0] for t in tokens)
    acceptance = spec.last_stats.get("acceptance_rate", 0.0)
    plain_rate, spec_rate = (sorted(r[k] for r in rates)[len(rates) // 2] for k in (0, 1))
    values = f"plain EFT {plain_rate:.0f} tok/s, speculative K=4 {spec_rate:.0f} tok/s (medians), acceptance {acceptance:.2f}"
    claims = [api.Claim("identical", [[1.0 if same else 0.0]], 1.0, "identical tokens"),
              api.Claim("faster", [ratios], 1.0, "speed ratio")]  # fmt: skip
    speed = claims[1].verdict().text()
    verdict = f"{speed} | identical tokens" if same else f"fails: tokens DIFFER | {speed}"
    return DemoLine("decode", "speculative up-scaling (EFT paper): identical output and faster", "review (batch 1, greedy)",
                    values, verdict, time.perf_counter() - t0, claims)  # fmt: skip
