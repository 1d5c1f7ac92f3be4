"""Multi-expert DLF: which per-step search serves every task? Variants measured on the zoo's skill tasks.

All variants fuse z_L + Σ_t α_t (z_t − z_S−) with experts for different skills (facts, addition) on one small base;
they differ in which weight vectors are candidates and what the candidate is judged against:

- `one-sum` (`--rule dlf`, the default `--dlf-mode one`): one expert active per candidate (α·e_t); objective
  Σ_t' over every expert's targets: [KL(P̃‖P) − KL(Q_t'‖Q)]² + [KL(P‖P̃) − KL(Q‖Q_t')]².
- `joint` (`--dlf-mode joint`): every expert's weight searched together over the grid's product (441 candidates
  for two experts); the same summed objective.
- `one-own`: one expert active; a candidate α·e_t is judged against its own expert's targets only.
- `route`: the expert that moved furthest from the small base at this step (largest KL(Q_t‖Q)) is the active one,
  and its α is the single-expert DLF choice.

Baselines: fixed equal weights (1/T each) and the task's own expert under single-expert DLF. `one-sum` and `joint`
run modelops' own searches; `one-own` and `route` are an exhaustive float64 search here (benchmark code only).

    OMP_NUM_THREADS=1 python benchmarks/dlf_variants.py --seeds 0,1,2 [--preset mini] [--limit 128]
"""

from __future__ import annotations

import argparse

import torch

from modelops import api

GRID = [round(0.1 * i, 1) for i in range(21)]  # DLF's default grid, 0 … 2


def tilt_kls(large: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(P̃‖P), KL(P‖P̃)) for fused logits large + delta, rows × candidates (float64)."""
    log_p = large.log_softmax(-1)
    log_q = (large + delta).log_softmax(-1)
    f = (log_q.exp() * (log_q - log_p)).sum(-1)
    g = (log_p.exp() * (log_p - log_q)).sum(-1)
    return f, g


class ExhaustiveDlf:
    """A drop-in for the decoder's DLF search: (weights (B, T), objective, fused logits)."""

    def __init__(self, variant: str, n_experts: int) -> None:
        self.variant = variant
        rows = [[0.0] * n_experts] + [[a if t == e else 0.0 for t in range(n_experts)] for e in
                                      range(n_experts) for a in GRID if a]  # fmt: skip
        self.candidates = torch.tensor(rows, dtype=torch.float64)  # (C, T)
        self.owner = torch.tensor([max(range(n_experts), key=lambda t: abs(r[t])) for r in rows])  # active expert

    def __call__(self, large, base, experts, fuse=True):
        zl, zs = large.double(), base.double()
        deltas = torch.stack([e.double() - zs for e in experts], 1)  # (B, T, V)
        log_q = zs.log_softmax(-1)[:, None]
        log_qt = torch.stack([e.double() for e in experts], 1).log_softmax(-1)
        target_f = (log_qt.exp() * (log_qt - log_q)).sum(-1)  # (B, T): KL(Q_t‖Q)
        target_g = (log_q.exp() * (log_q - log_qt)).sum(-1)  # KL(Q‖Q_t)
        shift = torch.einsum("ct,btv->bcv", self.candidates, deltas)  # (B, C, V)
        f, g = tilt_kls(zl[:, None], shift)  # (B, C)
        own_f, own_g = target_f[:, self.owner], target_g[:, self.owner]  # each candidate against its own expert
        objective = (f - own_f) ** 2 + (g - own_g) ** 2
        if self.variant == "route":  # only the furthest-moved expert's candidates (and α = 0)
            chosen = target_f.argmax(-1)  # (B,)
            allowed = (self.owner[None] == chosen[:, None]) | (self.candidates.abs().sum(-1) == 0)[None]
            objective = objective.masked_fill(~allowed, float("inf"))
        best = objective.argmin(-1)
        weights = self.candidates[best].float()  # (B, T)
        fused = large + torch.einsum("bt,btv->bv", weights.double(), deltas).float()
        return weights, objective.float(), fused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks = ["facts", "addition"]
    runs: dict[tuple[str, str], list[list[float]]] = {}
    print(
        f"| zoo seed | task | {' | '.join(['task expert (DLF)', 'fixed equal', 'one-sum', 'joint', 'one-own', 'route'])} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        zoo = api.build_zoo(args.preset, seed)
        r = {k: str(v) for k, v in api.zoo_roles(zoo).items()}
        experts = [r[f"sft_{t}"] for t in tasks]
        for task in tasks:
            spec = api.zoo_task(task, zoo)
            systems = {
                "task expert (DLF)": api.SystemSpec("own", r["large_base"], r["small_base"], [r[f"sft_{task}"]], rule="dlf"),
                "fixed equal": api.SystemSpec("fixed", r["large_base"], r["small_base"], experts, rule="fixed",
                                              weights=[0.5, 0.5]),
            }  # fmt: skip
            cells = {}
            for name, system in systems.items():
                cells[name] = api.evaluate({name: system}, [spec], limit=args.limit, device="cpu").results[0]
            for variant in ("one-sum", "joint", "one-own", "route"):
                mode = "joint" if variant == "joint" else "one"
                decoder = api.CoDecoder.load(
                    r["large_base"], r["small_base"], experts, api.FusionRule("dlf", dlf_mode=mode), device="cpu"
                )
                if variant in ("one-own", "route"):
                    decoder._dlf = ExhaustiveDlf(variant, len(experts))
                system = api.SystemSpec(variant, decoder=decoder)
                cells[variant] = api.evaluate({variant: system}, [spec], limit=args.limit, device="cpu").results[0]
                decoder.close()
            own = api.cell_values(cells["task expert (DLF)"])
            text = []
            for name, cell in cells.items():
                v = api.better(own, api.cell_values(cell), margin=0.05)  # not worse than the task's own expert
                text.append(
                    f"{cell.mean:.3f} ({v.outcome} vs own)" if name != "task expert (DLF)" else f"{cell.mean:.3f}"
                )
                runs.setdefault((task, name), []).append(api.cell_values(cell))
            print(f"| {seed} | {task} | " + " | ".join(text) + " |", flush=True)
    print(
        "\nPooled over the seeds (paired bootstrap within each seed, one-sided 95%): mean, then the effect against the"
    )
    print("task's own expert under DLF (≲, margin 0.05) and against one-sum (<, the current rule):\n")
    print("| task | variant | mean | vs task expert (≲ 0.05) | vs one-sum (<) |")
    print("|---|---|---|---|---|")
    for (task, name), columns in runs.items():
        if name == "task expert (DLF)":
            continue
        mean = sum(map(sum, columns)) / sum(map(len, columns))
        cells = [f"{mean:.3f}"]
        for ref, margin in ((runs[(task, "task expert (DLF)")], 0.05), (runs[(task, "one-sum")], 0.0)):
            if ref is columns:
                cells.append("–")
                continue
            v = api.pooled([api.Claim("better", [a, b], margin) for a, b in zip(ref, columns, strict=True)]).verdict()
            cells.append(f"{v.outcome} {v.effect:+.3f} [{v.low:+.3f}, {v.high:+.3f}]")
        print(f"| {task} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
