"""Running one system on one task: every row's record (prediction, value), in row order, on every process.

Data-parallel through accelerate: the rows are cut into batches of `batch_size` first, and whole batches are split
between processes (`PartialState.split_between_processes`), then the records are gathered (`gather_object`).
Greedy and lock-step sampled rows do not depend on the batching (each prompt samples from its own stream, keyed by
seed and id); search and speculative batches are decoded with the same rows and seed (`seed + batch index`)
whatever the number of processes. So results do not depend on it.

A record is handed to `on_record` as soon as its row is finished, and rows in `done` are not run again: that is how
an interrupted evaluation keeps its finished rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from modelops.eval.metrics import RewardModel, choice_prediction, exact_match
from modelops.eval.tasks import TaskSpec, answer_index, load_callable

Progress = Callable[[str, int, int], None]  # (description, rows done, rows total)
OnRecord = Callable[[dict[str, Any]], None]


class Scorers:
    """Loaded once per task and process: the reward / fluency functions, the reward model."""

    def __init__(self, task: TaskSpec, device: str) -> None:
        self.reward = load_callable(task.reward) if task.metric == "reward" and task.reward else None
        self.fluency = load_callable(task.fluency) if task.fluency else None
        self.rm = RewardModel(task.rm, device=device) if task.metric == "rm" and task.rm else None


def generation_record(task: TaskSpec, row: dict, gen: Any, scorers: Scorers) -> dict[str, Any]:
    """One generated row's record; its `value` is what the summary averages (a reward model fills it later)."""
    finished = gen.finish_reason in ("eos", "stop")
    judged = gen.text if finished or task.unfinished_suffix is None else gen.text + task.unfinished_suffix
    rec: dict[str, Any] = {"id": row["id"], "prompt": row["prompt"], "text": gen.text,
                           "finish_reason": gen.finish_reason, "num_tokens": gen.num_tokens}  # fmt: skip
    if task.metric == "exact":
        ok = exact_match(gen.text, row["reference"], normalized=task.normalize)
        if task.require_eos and gen.finish_reason != "eos":  # the zoo's rule: the answer, then <eos>
            ok = 0.0
        rec.update(reference=row["reference"], value=ok)
    elif task.metric == "reward":
        rec["value"] = float(scorers.reward(row["prompt"], judged))  # type: ignore[misc]
    if scorers.fluency is not None:
        rec["fluent"] = bool(scorers.fluency(row["prompt"], judged))
    return rec


def score_rows(
    decoder: Any,
    task: TaskSpec,
    rows: list[dict],
    indices: list[int],
    sampling: Any,
    scorers: Scorers,
    batch_size: int,
    on_rows: Callable[[int], None] | None = None,
    on_record: OnRecord | None = None,
) -> list[dict[str, Any]]:
    """Records of `rows` (task row numbers `indices`), each passed to `on_record` once final."""
    prompts = [r["prompt"] for r in rows]
    if task.metric == "choice":
        flat_p = [p for r in rows for p in [r["prompt"]] * len(r["choices"])]
        flat_c = [c for r in rows for c in r["choices"]]
        flat = decoder.score(flat_p, flat_c, batch_size=max(batch_size, len(flat_c)))
        out, pos = [], 0
        for i, r in zip(indices, rows, strict=True):
            lps = flat[pos : pos + len(r["choices"])]
            pos += len(r["choices"])
            pred, gold = choice_prediction(lps), answer_index(r, task.source)
            out.append({"id": r["id"], "prompt": r["prompt"], "prediction": pred, "answer": gold,
                        "logprob_sums": [sum(lp) for lp in lps], "value": float(pred == gold), "index": i})  # fmt: skip
            if on_record is not None:
                on_record(out[-1])
        return out
    where = {r["id"]: (i, r) for i, r in zip(indices, rows, strict=True)}
    per_row = on_record if task.metric != "rm" else None  # a reward model scores the batch at the end
    made: dict[int, dict[str, Any]] = {}  # row number -> its record, each made once (reward functions run once)

    def record(gen: Any) -> dict[str, Any]:
        i, row = where[gen.id]
        if i not in made:
            made[i] = {**generation_record(task, row, gen, scorers), "index": i}
        return made[i]

    def finished(gen: Any) -> None:
        per_row(record(gen))  # type: ignore[misc]

    gens = decoder.generate(prompts, sampling, ids=[r["id"] for r in rows], batch_size=batch_size,
                            on_batch=on_rows, on_generation=finished if per_row else None)  # fmt: skip
    out = [record(g) for g in gens]
    if task.metric == "rm":
        assert scorers.rm is not None
        values = scorers.rm.score(prompts, [rec["text"] for rec in out], batch_size=batch_size)
        for rec, v in zip(out, values, strict=True):
            rec["value"] = float(v)
            if on_record is not None:
                on_record(rec)
    return out


def run_task(
    decoder: Any,
    task: TaskSpec,
    sampling: Any = None,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    progress: Progress | None = None,
    state: Any = None,
    done: dict[int, dict[str, Any]] | None = None,
    on_record: OnRecord | None = None,
) -> list[dict[str, Any]]:
    """Every row's record, in row order, on every process (batches split between processes, then gathered).
    Rows whose number is in `done` keep that record and are not run."""
    from modelops.decode.sampling import SamplingConfig

    sampling = sampling or SamplingConfig()
    if task.max_new_tokens is not None:
        sampling = replace(sampling, max_new_tokens=task.max_new_tokens)
    done = done or {}
    n = len(task.rows)
    batches = [(b, list(range(lo, min(lo + batch_size, n)))) for b, lo in enumerate(range(0, n, batch_size))]
    scorers = Scorers(task, device)
    mine: list[tuple[int, list[int]]] = batches
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(batches) as part:
            mine = list(part)
    records: list[dict[str, Any]] = [done[i] for _, idx in mine for i in idx if i in done]
    mine = [(b, [i for i in idx if i not in done]) for b, idx in mine]
    mine = [(b, idx) for b, idx in mine if idx]
    total, finished = sum(len(idx) for _, idx in mine) + len(records), len(records)

    def advance(k: int) -> None:
        nonlocal finished
        finished += k
        if progress:
            progress(task.name, finished, total)

    generated = task.metric != "choice"
    if generated and mine:
        # one call over this process's rows, so a finished row's place goes to the next prompt at once: greedy
        # and seeded rows (each prompt draws from its own stream, in every loop) do not depend on the batching
        mine = [(0, [i for _, idx in mine for i in idx])]
    for _, idx in mine:
        records += score_rows(decoder, task, [task.rows[i] for i in idx], idx, sampling, scorers, batch_size,
                              on_rows=advance if generated else None, on_record=on_record)  # fmt: skip
        if not generated:
            advance(len(idx))
    if state is not None and state.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
    records.sort(key=lambda rec: rec["index"])
    if [rec["index"] for rec in records] != list(range(n)):
        raise RuntimeError(f"gathered {len(records)} records for {n} rows of {task.name}")
    return records
