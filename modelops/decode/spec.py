"""A fused-decoding configuration: recipe YAML + flags → one validated `DecodeSpec`.

Recipe keys are the flag names with underscores (`large`, `small_base`, `experts`, `rule`, `weights`, `gamma`,
`dlf_grid`, `dlf_bounds`, `beam_width`, `successors`, `chunk_len`, `n`, `speculative`,
`speculative_schedule`, `chat_template_for`, and the sampling keys `max_new_tokens`, `temperature`, `top_k`, `top_p`, `stop`, `seed`).
Flags given on the command line override the recipe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from modelops.decode.sampling import SamplingConfig
from modelops.decode.types import SEARCH_RULES
from modelops.errors import RecipeError
from modelops.runtime.zoo_names import resolve_model

RULES = ("single", "eft", "proxy", "fixed", "dlf", "cbs", "bon")
SPECULATIVE_SCHEDULES = ("constant", "heuristic")  # draft length: K every round, or transformers' +2 / -1
SHARED_WITH_EVAL = ("name", "tasks", "dtype")  # eval recipe keys fuse-decode accepts and ignores
SEARCH_SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 1.0}
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed")

logger = logging.getLogger(__name__)


@dataclass
class DecodeSpec:
    large: str = ""
    small_base: str | None = None
    experts: list[str] = field(default_factory=list)
    rule: str = ""  # empty: eft with an expert, single without
    weights: list[float] = field(default_factory=list)
    gamma: float = 1.0
    dlf_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])
    dlf_bounds: list[tuple[float, float]] | None = None
    dlf_mode: str = "one"
    beam_width: int = 4
    successors: int = 4
    chunk_len: int = 5
    n: int = 16
    speculative: int = 0
    speculative_schedule: str = "constant"
    chat_template_for: str = "none"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        if not self.large:
            raise RecipeError("no large model: pass --large (or `large:` in the recipe)")
        if self.rule not in RULES:
            raise RecipeError(f"rule {self.rule!r} is not one of {', '.join(RULES)}")
        if self.rule != "single" and (not self.small_base or not self.experts):
            raise RecipeError(f"--rule {self.rule} needs --small-base and at least one --expert (or use --rule single)")
        if self.rule in ("eft", "proxy") and len(self.experts) != 1:
            raise RecipeError(f"--rule {self.rule} takes exactly one --expert; use --rule fixed or dlf for several")
        if self.rule in SEARCH_RULES and len(self.experts) != 1:
            raise RecipeError(f"--rule {self.rule} is guided by exactly one --expert (got {len(self.experts)})")
        if self.rule == "fixed" and self.weights and len(self.weights) != len(self.experts):
            raise RecipeError(f"--rule fixed: {len(self.weights)} --weight values for {len(self.experts)} experts")
        if self.dlf_bounds is not None and len(self.dlf_bounds) != len(self.experts):
            raise RecipeError(f"--dlf-bounds: {len(self.dlf_bounds)} ranges for {len(self.experts)} experts")
        if self.speculative < 0:
            raise RecipeError(f"--speculative must be >= 0, got {self.speculative}")
        if self.speculative and self.rule not in ("eft", "proxy", "fixed", "dlf"):
            raise RecipeError(f"--speculative works with --rule eft, proxy, fixed or dlf, not {self.rule}")
        check_schedule(self.speculative_schedule, "--speculative-schedule")
        check_dlf_mode(self.dlf_mode)
        for name in ("beam_width", "successors", "chunk_len", "n"):
            if getattr(self, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.chat_template_for not in ("expert", "all", "none"):
            raise RecipeError(f"chat_template_for {self.chat_template_for!r}: expected expert, all or none")
        self.sampling.validate()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sampling"}
        out.update({k: getattr(self.sampling, k) for k in SAMPLING_KEYS})
        return out


def check_schedule(schedule: str, where: str) -> None:
    if schedule not in SPECULATIVE_SCHEDULES:
        raise RecipeError(f"{where} {schedule!r}: expected {' or '.join(SPECULATIVE_SCHEDULES)}")


DLF_MODES = ("one", "joint")  # one expert active per candidate (the default), or every expert's weight together


def check_dlf_mode(mode: str) -> None:
    if mode not in DLF_MODES:
        raise RecipeError(f"--dlf-mode {mode!r}: expected one (one expert per step) or joint (all experts' weights)")


def parse_grid(text: str) -> list[float]:
    """`0:2:0.1` (start:stop:step, inclusive) or a comma list `-0.5,0,0.5`."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = round((stop - start) / step)
            return [round(start + i * step, 6) for i in range(n + 1)]
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"alpha grid {text!r}: expected start:stop:step (e.g. 0:2:0.1) or a comma list") from None


def parse_bounds(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise RecipeError(f"alpha bounds {text!r}: expected lo:hi, e.g. 0:1.5") from None
    if lo > hi:
        raise RecipeError(f"alpha bounds {text!r}: lo is above hi")
    return lo, hi


RENAMED_KEYS = {"alpha_grid": "dlf_grid", "alpha_bounds": "dlf_bounds"}  # old name -> name, until the next release


def renamed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with deprecated key names replaced (one warning each): α is ExPO's; DLF's knobs carry its name."""
    for old, new in RENAMED_KEYS.items():
        if old in data:
            logger.warning("%s: %r is deprecated; call it %r (the old name goes in the next release)", where, old, new)
            data.setdefault(new, data.pop(old))
            data.pop(old, None)
    return data


def load_spec(recipe: Path | None, overrides: dict[str, Any]) -> DecodeSpec:
    """Recipe (if any), then every override that is not None; validated."""
    data: dict[str, Any] = {}
    if recipe is not None:
        data = renamed(read_recipe(recipe), str(recipe))
    data.update({k: v for k, v in overrides.items() if v is not None and v != [] and v != ()})
    spec = DecodeSpec()
    known = {f.name for f in fields(DecodeSpec)} | set(SAMPLING_KEYS)
    for key in SHARED_WITH_EVAL:  # one recipe serves `eval` and `fuse-decode`
        data.pop(key, None)
    for key, value in data.items():
        if key not in known:
            where = f" in {recipe}" if recipe else ""
            raise RecipeError(f"unknown key {key!r}{where}; known keys: {', '.join(sorted(known - {'sampling'}))}")
        if key in SAMPLING_KEYS:
            setattr(spec.sampling, key, list(value) if key == "stop" else value)
        elif key == "dlf_grid" and isinstance(value, str):
            spec.dlf_grid = parse_grid(value)
        elif key == "dlf_bounds":
            spec.dlf_bounds = [parse_bounds(v) if isinstance(v, str) else (float(v[0]), float(v[1])) for v in value]
        elif key in ("experts", "weights"):
            setattr(spec, key, list(value) if isinstance(value, (list, tuple)) else [value])
        else:
            setattr(spec, key, value)
    spec.weights = [float(w) for w in spec.weights]
    _resolve_zoo_roles(spec)
    if not spec.rule:
        spec.rule = "eft" if spec.experts else "single"
    if spec.rule in SEARCH_RULES:  # the papers' sampling unless asked otherwise: searching greedy rows finds nothing
        for key, value in SEARCH_SAMPLING.items():
            if key not in data:
                setattr(spec.sampling, key, value)
    spec.validate()
    return spec


def read_recipe(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys (large, small_base, experts, rule, …)")
    return data


def read_prompts(
    path: Path, need_continuation: bool = False, *, missing: str = "prompts file not found"
) -> list[dict[str, Any]]:
    """JSONL rows with a string `prompt` (and `continuation` for scoring); `id` defaults to the line number."""
    if not path.is_file():
        raise RecipeError(f"{path}: {missing}")
    rows = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise RecipeError(f'{path}:{lineno}: each line needs a string "prompt" field')
        if need_continuation and not isinstance(row.get("continuation"), str):
            raise RecipeError(f'{path}:{lineno}: --score needs a string "continuation" field on every line')
        row.setdefault("id", lineno)
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise RecipeError(f'{path}:{lineno}: "id" must be a string or an integer')
        first = seen.setdefault(json.dumps(row["id"]), lineno)
        if first != lineno:
            raise RecipeError(f"{path}:{lineno}: id {row['id']!r} is also on line {first}; ids must be unique")
        rows.append(row)
    if not rows:
        raise RecipeError(f"{path}: no prompts")
    return rows


def _resolve_zoo_roles(spec: DecodeSpec) -> None:
    """`zoo:ROLE` names a model of the newest zoo build (as in `modelops eval`)."""
    models = [spec.large, spec.small_base, *spec.experts]
    if not any(isinstance(m, str) and m.startswith("zoo:") for m in models):
        return
    spec.large = resolve_model(spec.large)
    spec.small_base = resolve_model(spec.small_base) if spec.small_base else None
    spec.experts = [resolve_model(e) for e in spec.experts]
