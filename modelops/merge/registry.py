"""The merge-method table: what each method needs, its parameters (mergekit's names and defaults) and its paper.

A method is one pure tensor function plus one `@register(...)` entry in its family module under
`modelops/merge/methods/`. The executor, the recipe validator, `--dry-run` and the model card read this table and
nothing else, so none of them knows a method by name.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from modelops.errors import RecipeError
from modelops.provenance import MethodDescription

BaseUse = Literal["required", "optional", "none"]


def closest(name: str, known: list[str] | set[str]) -> str:
    """' (did you mean X?)' for the nearest known spelling, or '' when nothing is close."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    match = match or sorted(k for k in known if len(name) >= 3 and (k.startswith(name) or name.startswith(k)))
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class Param:
    """One method parameter; `per_model` ones live under `models[].parameters`, others under `parameters`."""

    name: str
    default: Any = None  # None + required=True: must be given
    required: bool = False
    per_model: bool = False
    low: float | None = None
    high: float | None = None
    kind: type = float

    def check(self, value: Any, where: str) -> Any:
        if value is None and not self.required:
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{where}: expected true/false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        if self.kind is int and float(value) != int(value):
            raise RecipeError(f"{where}: expected a whole number, got {value!r}")
        value = self.kind(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            if self.high is None:
                raise RecipeError(f"{where}: {value} is below {self.low}; it must be ≥ {self.low}")
            if self.low is None:
                raise RecipeError(f"{where}: {value} is above {self.high}; it must be ≤ {self.high}")
            raise RecipeError(f"{where}: {value} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class TensorJob:
    """Everything a method needs for one output tensor: inputs as stored, parameters resolved for this tensor."""

    name: str
    base: torch.Tensor | None
    tensors: list[torch.Tensor]
    per_model: dict[str, list[Any]]  # e.g. {"weight": [0.7, 0.3]}, one value per entry of `tensors`
    params: dict[str, Any]  # global parameters, resolved for this tensor
    seed: int = 0

    def generators(self) -> list[torch.Generator]:
        """One generator per model, seeded from (seed, tensor name, model index): independent of shard order."""
        return [self.generator(i) for i in range(len(self.tensors))]

    def generator(self, index: int) -> torch.Generator:
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        g = torch.Generator(device=device)
        g.manual_seed(zlib.crc32(f"{self.seed}:{self.name}:{index}".encode()))
        return g


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[TensorJob], torch.Tensor]
    base: BaseUse
    params: tuple[Param, ...]
    min_models: int = 1
    max_models: int | None = None
    reference: str = "base"  # which input gives non-float tensors, config and tokenizer: "base" or "first"
    vocab_rows_from_reference: bool = False  # extra embedding rows (added tokens) copied, not merged
    elementwise: bool = False  # output row i depends only on input rows i: large tensors are streamed in row blocks
    random: bool = False  # draws random numbers (seeded per tensor name); mergekit's draws differ
    paper: str = ""
    paper_url: str = ""
    summary: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    title: str = ""  # how a model card names the method (default: its name)
    roles: tuple[str, str] = ("base", "model")  # what the recipe file calls the base and the other inputs
    small_update: bool = False  # the update is small next to the weights: measure how much survives rounding
    # The value as float32 row blocks of its (rows, cols) view, in order, for a method that needs whole tensors'
    # statistics but not the whole result at once: the executor writes each block as it comes.
    blocks: Callable[[TensorJob], Iterator[torch.Tensor]] | None = None

    def description(self) -> MethodDescription:
        """The method as a model card presents it: the one place its words live."""
        return MethodDescription(self.name, self.title or self.name, self.summary, self.paper, self.paper_url)

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


REGISTRY: dict[str, MergeMethod] = {}


def register(name: str, **spec: Any) -> Callable[[Callable[[TensorJob], torch.Tensor]], Callable]:
    """Add a method to the table under its name and aliases."""

    def wrap(fn: Callable[[TensorJob], torch.Tensor]) -> Callable[[TensorJob], torch.Tensor]:
        method = MergeMethod(name=name, fn=fn, **spec)
        for key in (name, *method.aliases):
            REGISTRY[key] = method
        return fn

    return wrap


def lookup(name: str) -> MergeMethod:
    """The method registered as `name`, or one line naming the closest known method."""
    method = REGISTRY.get(name)
    if method is None:
        known = sorted({m.name for m in REGISTRY.values()})
        raise RecipeError(f"unknown merge method {name!r}{closest(name, known)}; known methods: {', '.join(known)}")
    return method


# Parameters shared by several methods (mergekit's names and defaults).
WEIGHT = Param("weight", per_model=True, required=True)
DENSITY = Param("density", default=1.0, per_model=True, low=0.0, high=1.0)
LAMBDA = Param("lambda", default=1.0)
INT8_MASK = Param("int8_mask", default=False, kind=bool)  # accepted for mergekit configs; masks are exact here
