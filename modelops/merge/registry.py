"""Merge methods by name: each entry adapts one pure function in `methods.py` to the executor's call shape.

Adding a method is one decorated function: declare whether it needs a base model, its parameters (per model and
global, with defaults and ranges) and its paper; the executor, the recipe validator, `--dry-run` and the model
card all read this table.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelops.errors import RecipeError
from modelops.merge import methods


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
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{where}: expected true/false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        value = self.kind(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise RecipeError(f"{where}: {value} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class TensorJob:
    """Everything a method needs for one output tensor, in float32."""

    name: str
    base: torch.Tensor | None
    tensors: list[torch.Tensor]
    per_model: dict[str, list[Any]]  # e.g. {"weight": [0.7, 0.3]}
    params: dict[str, Any]  # global parameters, resolved for this tensor
    seed: int = 0

    def generators(self) -> list[torch.Generator]:
        """One generator per model, seeded from (seed, tensor name, model index): independent of shard order."""
        gens = []
        for i, t in enumerate(self.tensors):
            g = torch.Generator(device=t.device)
            g.manual_seed(zlib.crc32(f"{self.seed}:{self.name}:{i}".encode()))
            gens.append(g)
        return gens


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[TensorJob], torch.Tensor]
    needs_base: bool
    params: tuple[Param, ...]
    min_models: int = 1
    max_models: int | None = None
    reference: str = "base"  # which input gives non-float tensors, config and tokenizer: "base" or "first"
    vocab_rows_from_reference: bool = False  # extra embedding rows (added tokens) copied, not merged
    elementwise: bool = False  # output row i depends only on input rows i: large tensors are streamed in row blocks
    paper: str = ""
    paper_url: str = ""
    summary: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


REGISTRY: dict[str, MergeMethod] = {}


def register(name: str, **spec: Any) -> Callable[[Callable[[TensorJob], torch.Tensor]], Callable]:
    def wrap(fn: Callable[[TensorJob], torch.Tensor]) -> Callable[[TensorJob], torch.Tensor]:
        method = MergeMethod(name=name, fn=fn, **spec)
        for key in (name, *method.aliases):
            REGISTRY[key] = method
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    method = REGISTRY.get(name)
    if method is None:
        known = ", ".join(sorted({m.name for m in REGISTRY.values()}))
        raise RecipeError(f"unknown merge method {name!r}; known methods: {known}")
    return method


def method_names() -> list[str]:
    return sorted({m.name for m in REGISTRY.values()})


WEIGHT = Param("weight", per_model=True, required=True)
DENSITY = Param("density", default=1.0, per_model=True, low=0.0, high=1.0)
LAMBDA = Param("lambda", default=1.0)
RESCALE = Param("rescale", default=True, kind=bool)

TA_PAPER = ("Ilharco et al., Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089")
TIES_PAPER = ("Yadav et al., TIES-Merging", "https://arxiv.org/abs/2306.01708")
DARE_PAPER = ("Yu et al., Language Models are Super Mario (DARE)", "https://arxiv.org/abs/2311.03099")
EXPO_PAPER = ("Zheng et al., Weak-to-Strong Extrapolation Expedites Alignment", "https://arxiv.org/abs/2404.16792")


@register(
    "linear",
    elementwise=True,
    needs_base=False,
    params=(WEIGHT, Param("normalize", default=True, kind=bool)),
    reference="first",
    summary="weighted average of the models",
    paper="Wortsman et al., Model soups",
    paper_url="https://arxiv.org/abs/2203.05482",
)
def _linear(job: TensorJob) -> torch.Tensor:
    return methods.linear(job.tensors, job.per_model["weight"], normalize=job.params["normalize"])


@register(
    "task_arithmetic",
    elementwise=True,
    needs_base=True,
    params=(WEIGHT, LAMBDA, Param("normalize", default=False, kind=bool)),
    summary="base + λ Σ w_i (θ_i − base)",
    paper=TA_PAPER[0],
    paper_url=TA_PAPER[1],
)
def _task_arithmetic(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return methods.task_arithmetic(
        job.base, job.tensors, job.per_model["weight"], lambda_=job.params["lambda"], normalize=job.params["normalize"]
    )


@register(
    "ties",
    needs_base=True,
    params=(WEIGHT, DENSITY, LAMBDA, Param("normalize", default=True, kind=bool)),
    summary="trim task vectors to top-density magnitudes, elect signs, disjoint mean",
    paper=TIES_PAPER[0],
    paper_url=TIES_PAPER[1],
)
def _ties(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return methods.ties(
        job.base,
        job.tensors,
        job.per_model["weight"],
        job.per_model["density"],
        lambda_=job.params["lambda"],
        normalize=job.params["normalize"],
    )


def _dare(job: TensorJob, consensus: bool) -> torch.Tensor:
    assert job.base is not None
    return methods.dare(
        job.base,
        job.tensors,
        job.per_model["weight"],
        job.per_model["density"],
        job.generators(),
        consensus=consensus,
        rescale=job.params["rescale"],
        lambda_=job.params["lambda"],
        normalize=job.params["normalize"],
    )


@register(
    "dare_linear",
    needs_base=True,
    params=(WEIGHT, DENSITY, LAMBDA, RESCALE, Param("normalize", default=False, kind=bool)),
    summary="random drop + rescale of task vectors, then task arithmetic (seeded)",
    paper=DARE_PAPER[0],
    paper_url=DARE_PAPER[1],
)
def _dare_linear(job: TensorJob) -> torch.Tensor:
    return _dare(job, consensus=False)


@register(
    "dare_ties",
    needs_base=True,
    params=(WEIGHT, DENSITY, LAMBDA, RESCALE, Param("normalize", default=False, kind=bool)),
    summary="random drop + rescale of task vectors, then TIES sign election (seeded)",
    paper=DARE_PAPER[0],
    paper_url=DARE_PAPER[1],
)
def _dare_ties(job: TensorJob) -> torch.Tensor:
    return _dare(job, consensus=True)


@register(
    "slerp",
    needs_base=True,
    params=(Param("t", required=True, low=0.0, high=1.0),),
    min_models=1,
    max_models=1,
    summary="spherical interpolation from the base (t=0) to the other model (t=1)",
    paper="Shoemake, Animating rotation with quaternion curves (SLERP)",
    paper_url="https://en.wikipedia.org/wiki/Slerp",
)
def _slerp(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return methods.slerp(job.base, job.tensors[0], job.params["t"])


@register(
    "expo",
    elementwise=True,
    needs_base=True,
    params=(Param("alpha", required=True, low=-1.0),),
    min_models=1,
    max_models=1,
    reference="first",
    vocab_rows_from_reference=True,
    summary="θ_dpo + α(θ_dpo − θ_sft): extrapolate an aligned model away from its SFT starting point",
    paper=EXPO_PAPER[0],
    paper_url=EXPO_PAPER[1],
)
def _expo(job: TensorJob) -> torch.Tensor:
    assert job.base is not None
    return methods.expo(job.base, job.tensors[0], job.params["alpha"])
