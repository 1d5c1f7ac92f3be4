"""`LockstepDecoder`: the members, the fusion rule, and the lock-step loops (plain fused generation, scoring).

`decode.codecoder.CoDecoder`, the decode half's public face, extends it with the loops that take a whole decoder
(search, speculative); they import this module, so this one imports none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch

from modelops.decode.dlf import DlfSearch, dlf_candidates
from modelops.decode.dlf_joint import JointDlfSearch, joint_candidates
from modelops.decode.loops import RowOutput, StopChecker, continuation_logprobs, lockstep_generate, response_text
from modelops.decode.models import Member
from modelops.decode.overlap import Overlap
from modelops.decode.rules import eft_coefficients, fixed_coefficients, fuse_components
from modelops.decode.sampling import SamplingConfig, prompt_key
from modelops.decode.spec import check_dlf_mode
from modelops.decode.types import SEARCH_RULES, Generation, RowResults
from modelops.decode.vocab import aligned_components, check_shared_vocabulary, stop_token_ids
from modelops.devices import input_device
from modelops.errors import ModelopsError
from modelops.runtime.models import load_causal_lm, memory_beside, weight_bytes
from modelops.runtime.runner import Runner

logger = logging.getLogger(__name__)

LOGIT_RULES = ("single", "eft", "proxy", "fixed", "dlf")
DEFAULT_GRID = [round(0.1 * i, 1) for i in range(21)]
SMALL_MODEL_HEADROOM = 1.25  # the small models' weights, plus a quarter for their KV caches and activations
D = TypeVar("D", bound="LockstepDecoder")


@dataclass
class FusionRule:
    """Which combination to apply. `weights`: w for eft, α for proxy, one per expert for fixed."""

    name: str = "eft"
    weights: list[float] = field(default_factory=list)
    gamma: float = 1.0
    dlf_grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    dlf_bounds: list[tuple[float, float]] | None = None
    dlf_mode: str = "one"  # one expert active per candidate, or every expert's weight searched jointly
    beam_width: int = 4  # cbs: W
    successors: int = 4  # cbs: K
    chunk_len: int = 5  # cbs: L
    n: int = 16  # bon: N
    speculative: int = 0  # eft/proxy: the expert drafts this many tokens per round (0 = off)
    speculative_schedule: str = "constant"  # or heuristic: the draft length adapts to what was accepted

    @classmethod
    def from_spec(cls, spec: Any, name: str, **overrides: Any) -> FusionRule:
        """The rule described by any spec with FusionRule's field names (`DecodeSpec`, eval's `SystemSpec`);
        fields the spec leaves None keep their defaults."""
        values = {f.name: getattr(spec, f.name, None) for f in fields(cls) if f.name != "name"}
        values.update(overrides)
        kwargs = {k: list(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
        return cls(name=name, **kwargs)

    def coefficients(self, n_experts: int) -> list[float] | None:
        """Fixed coefficients over [large, base, experts…]; None for the per-step rule (dlf)."""
        if self.name == "single":
            return [1.0]
        if self.name in ("eft", "proxy"):
            if n_experts != 1:
                raise ModelopsError(f"--rule {self.name} takes one --expert (got {n_experts}); use --rule fixed or dlf")
            w = self.weights[0] if self.weights else 1.0
            return eft_coefficients(weight=w, gamma=self.gamma if self.name == "eft" else 1.0)
        if self.name == "fixed":
            weights = self.weights or [1.0 / n_experts] * n_experts
            if len(weights) != n_experts:
                raise ModelopsError(f"--rule fixed: {len(weights)} --weight values for {n_experts} experts")
            return fixed_coefficients(weights)
        if self.name == "dlf" or self.name in SEARCH_RULES:
            return None
        raise ModelopsError(f"unknown rule {self.name!r}; expected one of {', '.join(LOGIT_RULES)}")

    def dlf_search(self, n_experts: int) -> DlfSearch | None:
        """DLF's per-step search over its candidate weight vectors; None for every other rule."""
        if self.name != "dlf":
            return None
        if self.dlf_mode == "joint":
            return JointDlfSearch(joint_candidates(self.dlf_grid, n_experts, self.dlf_bounds))
        check_dlf_mode(self.dlf_mode)
        return DlfSearch(dlf_candidates(self.dlf_grid, n_experts, self.dlf_bounds))


class LockstepDecoder:
    """Several causal LMs sharing a vocabulary, decoded in lock-step under one fusion rule.

    Members are ordered [large, small base, experts…]; with the rule "single" only the large model runs.
    `generate` here runs the plain lock-step loop only; use `CoDecoder` for search and speculative rules.
    """

    def __init__(
        self, members: list[Member], rule: FusionRule, *, check_vocabulary: bool = True, parallel: bool = False
    ) -> None:
        self.members = members
        self.rule = rule
        self.n_experts = max(0, len(members) - 2)
        if rule.name != "single" and (len(members) < 3):
            raise ModelopsError(f"--rule {rule.name} needs --large, --small-base and at least one --expert")
        self._coeffs = rule.coefficients(self.n_experts)
        if rule.dlf_bounds and len(rule.dlf_bounds) != self.n_experts:
            raise ModelopsError(f"--dlf-bounds: {len(rule.dlf_bounds)} given for {self.n_experts} experts")
        self.last_stats: dict[str, Any] = {}  # what the last generate() measured (acceptance rate, …)
        self._dlf = rule.dlf_search(self.n_experts)
        tokenizers = {m.spec if m.spec else m.role: m.tokenizer for m in members}
        # search rules (cbs/bon) work on text and may skip the check; the logit rules never do
        self.shared_vocabulary = len(members) == 1 or check_vocabulary
        if len(members) > 1 and check_vocabulary:
            self.width = check_shared_vocabulary(tokenizers)
        else:
            self.width = len(members[0].tokenizer)
        self.tokenizer = members[0].tokenizer
        self.stop_ids = stop_token_ids([m.tokenizer for m in members], [m.model for m in members])
        self.device = input_device(members[0].model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        # `parallel`: the small models step on a second thread beside the large one (same tokens, another core)
        self.overlap = Overlap() if parallel and len(members) > 1 else None

    def close(self) -> None:
        """Stop the `--parallel-models` worker thread (it would otherwise wait idle until the interpreter exits)."""
        if self.overlap is not None:
            self.overlap.close()
            self.overlap = None

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def load(
        cls: type[D],
        large: str,
        small_base: str | None = None,
        experts: Sequence[str] = (),
        rule: FusionRule | None = None,
        *,
        chat_template_for: str = "none",
        device: str = "cpu",
        dtype: str | None = None,
        device_map: str | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        check_vocabulary: bool = True,
        parallel: bool = False,
    ) -> D:
        """Load every member from folders or Hub ids; `chat_template_for` is expert, all or none."""
        if chat_template_for not in ("expert", "all", "none"):
            raise ModelopsError(f"--chat-template-for {chat_template_for!r}: expected expert, all or none")
        specs = [("large", large)]
        if small_base:
            specs.append(("base", small_base))
        specs += [("expert", e) for e in experts]
        max_memory = None
        if device_map and len(specs) > 1:  # room for the small models on their device, kept out of the map
            from accelerate.utils import get_max_memory

            small = sum(weight_bytes(spec, dtype, allow_pickle=allow_pickle) for _, spec in specs[1:])
            max_memory = memory_beside(get_max_memory(), int(small * SMALL_MODEL_HEADROOM), device)
        members = []
        for role, spec in specs:
            model, tok = load_causal_lm(
                spec,
                device=device,
                dtype=dtype,
                device_map=device_map if role == "large" else None,
                max_memory=max_memory if role == "large" else None,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
            )
            chat = chat_template_for == "all" or (chat_template_for == "expert" and role == "expert")
            members.append(Member(role, spec, model, tok, "chat" if chat else "plain"))
        rule = rule or FusionRule("single" if len(members) == 1 else "eft")
        return cls(members, rule, check_vocabulary=check_vocabulary, parallel=parallel)

    # -- the fusion callable the loops use -------------------------------------------------------------------

    def fuse(self, logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Members' logits (B, W_m) → fused (B, V) logits and the chosen weights (B, T) for dlf."""
        if not self.shared_vocabulary:
            raise ModelopsError(
                "these models do not share a vocabulary, so their logits cannot be fused; use --rule cbs"
            )
        comps = aligned_components([x.to(self.device) for x in logits], self.width)
        return fuse_components(comps, self._coeffs, self._dlf)

    def runners(self) -> list[Runner]:
        members = self.members if self.rule.name != "single" else self.members[:1]
        fallback = self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else self.pad_id
        return [Runner(m.model, m.role, fallback_id=int(fallback)) for m in members]

    def _prompt_ids(self, prompts: Sequence[str | list[int]]) -> list[list[list[int]]]:
        """Each member's ids of each prompt: text rendered as that member reads it (its chat template, its special
        tokens); a prompt given as token ids is fed to every member as it is (a caller that cut a long prompt)."""
        members = self.members if self.rule.name != "single" else self.members[:1]
        return [[m.render(p) if isinstance(p, str) else list(p) for p in prompts] for m in members]

    # -- public entry points -----------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str | list[int]],
        sampling: SamplingConfig | None = None,
        *,
        ids: Sequence[Any] | None = None,
        batch_size: int = 8,
        on_batch: Callable[[int], None] | None = None,
        continuous: bool = True,
        on_generation: Callable[[Generation], None] | None = None,
    ) -> list[Generation]:
        """Lock-step fused generation for every prompt, at most `batch_size` rows at a time. `continuous`: a
        finished row's place goes to the next prompt at once. `on_batch(k)`: k more prompts are done;
        `on_generation(g)`: one prompt's result, as soon as it is finished. With a seed, each prompt samples from
        its own stream (keyed by seed and id), so its tokens do not depend on the batch it decodes in."""
        sampling = sampling or SamplingConfig()
        sampling.validate()
        if self.rule.name in SEARCH_RULES or self.rule.speculative:
            what = f"--rule {self.rule.name}" if self.rule.name in SEARCH_RULES else "--speculative"
            raise ModelopsError(f"{what} is not a lock-step decode; use modelops.decode.CoDecoder to generate with it")
        stopper = StopChecker(self.stop_ids, sampling.stop, self.tokenizer, sampling.max_new_tokens)
        if not prompts:
            return []
        row_ids = list(ids) if ids is not None else list(range(len(prompts)))
        keys = [prompt_key(sampling.seed, i) for i in row_ids] if sampling.seed is not None else None
        stats: dict[str, Any] = {}
        results = RowResults(lambda k, out: self._to_generation(row_ids[k], out), on_generation)
        outs = lockstep_generate(
            self.runners(), self.fuse, self._prompt_ids(prompts), sampling, stopper, self.pad_id, None,
            overlap=self.overlap, rows=batch_size, refill=continuous, on_done=on_batch, stats=stats, row_keys=keys,
            on_row=results.on_row,
        )  # fmt: skip
        self.last_stats = stats
        return results.ordered(outs)

    def score(self, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 8) -> list[list[float]]:
        """Teacher-forced fused log-probs of each continuation's tokens (continuations tokenized on their own)."""
        if len(prompts) != len(continuations):
            raise ModelopsError(f"score: {len(prompts)} prompts but {len(continuations)} continuations")
        out: list[list[float]] = []
        for lo in range(0, len(prompts), batch_size):
            batch_p = list(prompts[lo : lo + batch_size])
            conts = [
                self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations[lo : lo + batch_size]
            ]
            out += continuation_logprobs(
                self.runners(), self.fuse, self._prompt_ids(batch_p), conts, self.pad_id, overlap=self.overlap
            )
        return out

    def score_ids(
        self, contexts: Sequence[list[int]], continuations: Sequence[list[int]], *, batch_size: int = 8
    ) -> list[tuple[list[float], list[bool]]]:
        """Teacher-forced fused log-probs of token-id continuations after token-id contexts (the same ids for every
        member: callers that tokenize themselves, such as lm-eval), with whether each token is the argmax."""
        members = self.members if self.rule.name != "single" else self.members[:1]
        out: list[tuple[list[float], list[bool]]] = []
        for lo in range(0, len(contexts), batch_size):
            ctx = [list(c) for c in contexts[lo : lo + batch_size]]
            flags: list[list[bool]] = []
            logps = continuation_logprobs(
                self.runners(), self.fuse, [ctx] * len(members), [list(c) for c in continuations[lo : lo + batch_size]],
                self.pad_id, overlap=self.overlap, greedy=flags,
            )  # fmt: skip
            out += list(zip(logps, flags, strict=True))
        return out

    def _to_generation(self, row_id: Any, out: RowOutput) -> Generation:
        return Generation(
            id=row_id,
            text=response_text(self.tokenizer, out),
            num_tokens=len(out.token_ids),
            finish_reason=out.finish_reason,
            weights=out.weights or None,
            score=out.score,
            token_ids=list(out.token_ids),
        )
