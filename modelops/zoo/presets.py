"""Build presets: every knob of a zoo build, visible in one place and hashed into the cache key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from modelops.zoo.train import ModelSize
from modelops.zoo.world import TASKS, WorldConfig


@dataclass(frozen=True)
class Stage:
    """One training run: steps, batch, learning rate."""

    steps: int
    batch: int = 32
    lr: float = 3e-4


@dataclass(frozen=True)
class Preset:
    name: str
    world: WorldConfig
    small: ModelSize
    large: ModelSize
    seq_len: int
    pretrain_small: Stage
    pretrain_large: Stage
    sft_small: dict[str, Stage]
    sft_large: dict[str, Stage]
    dpo: Stage
    dpo_beta: float = 0.1
    dpo_nll_weight: float = 0.5
    dpo_partial_fraction: float = 0.2  # the "partly trained" DPO checkpoint (ExPO's setting)
    dpo_prompt_repeats: int = 8  # each train review prompt is sampled this many times ...
    dpo_samples: int = 4  # ... as groups of this many SFT samples; pair = best vs worst by the gold reward
    tasks: tuple[str, ...] = field(default=TASKS)

    def to_dict(self) -> dict:
        return asdict(self)


MINI = Preset(
    name="mini",
    world=WorldConfig(
        entities=160,
        cities=10,
        colours=6,
        eval_entities=64,
        addition_eval=100,
        addition_sft=600,
        products_eval=8,
        corpus_tokens=300_000,
    ),
    small=ModelSize(hidden=32, layers=2),
    large=ModelSize(hidden=64, layers=2),
    seq_len=64,
    pretrain_small=Stage(1000, 32, 3e-3),
    pretrain_large=Stage(1000, 32, 2e-3),
    sft_small={t: Stage(150, 32, 5e-4) for t in TASKS},
    sft_large={t: Stage(150, 32, 5e-4) for t in TASKS},
    dpo=Stage(60, 32, 5e-4),
    dpo_prompt_repeats=4,
)

FULL = Preset(
    name="full",
    world=WorldConfig(),
    small=ModelSize(hidden=32, layers=2),
    large=ModelSize(hidden=160, layers=4),
    seq_len=64,
    pretrain_small=Stage(2400, 32, 3e-3),
    pretrain_large=Stage(2400, 32, 2e-3),
    sft_small={"facts": Stage(300), "addition": Stage(600), "review": Stage(300)},
    sft_large={"facts": Stage(800), "addition": Stage(800), "review": Stage(400)},
    dpo=Stage(300, 32, 3e-4),
)

PRESETS = {"mini": MINI, "full": FULL}
