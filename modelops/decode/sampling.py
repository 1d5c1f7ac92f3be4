"""Token choice on the fused logits: greedy, temperature, top-k, top-p (never on the components)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingConfig:
    """Decoding knobs shared by every loop. temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self) -> None:
        from modelops.errors import ModelopsError

        if self.max_new_tokens < 1:
            raise ModelopsError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ModelopsError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ModelopsError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ModelopsError(f"top_p must be in (0, 1], got {self.top_p}")


ARGMAX_CHUNK = 128  # first_argmax: columns per chunk


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)` (first maximum on ties, NaN counts as the maximum), faster on CPU.

    torch's CPU argmax over a 32k-wide row is scalar code (0.9 ms for 16 rows here, most of a greedy step's own
    work); a vectorised amax per chunk of columns finds the first chunk holding the maximum, and argmax runs only
    inside that chunk.
    """
    width = logits.shape[-1]
    if logits.device.type != "cpu" or width <= 2 * ARGMAX_CHUNK or not logits.is_floating_point():
        return logits.argmax(-1)
    rows = logits.reshape(-1, width)
    n = width // ARGMAX_CHUNK
    maxima = rows[:, : n * ARGMAX_CHUNK].unflatten(-1, (n, ARGMAX_CHUNK)).amax(-1)  # (R, n)
    if n * ARGMAX_CHUNK < width:
        maxima = torch.cat([maxima, rows[:, n * ARGMAX_CHUNK :].amax(-1, keepdim=True)], -1)
    start = maxima.argmax(-1) * ARGMAX_CHUNK  # (R,) first column of the first chunk holding the maximum
    # the last chunk may be shorter: clamped columns repeat the row's last column, which cannot win a tie early
    cols = (start[:, None] + torch.arange(ARGMAX_CHUNK, device=rows.device)).clamp_max_(width - 1)
    best = start + rows.gather(1, cols).argmax(-1)
    return best.reshape(logits.shape[:-1])


def warp(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p, on (B, V) fused logits; removed entries become −inf."""
    if config.greedy:
        return logits
    out = logits / config.temperature
    if config.top_k and config.top_k < out.shape[-1]:
        kth = out.topk(config.top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= config.top_p  # keep the smallest prefix reaching top_p (always >= 1 token)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


SAMPLE_BLOCK = 128  # sample_rows: columns per block


def sample_rows(
    weights: torch.Tensor, generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """One column per row of (B, V) non-negative weights, column j with probability weights[j] / row sum.

    The distribution of `torch.multinomial(weights, 1)` (another random stream), by the inverse CDF with one
    uniform per row: torch's multinomial draws an exponential for every entry, V random numbers a row (~1 ms for
    a 32k-wide row on CPU, as long as a small model's whole decode step). Two levels keep it to one vectorised
    pass over the row: a block is chosen by the running sum of the blocks' sums, then a column inside it.
    Sums are float64. `uniforms` (B,) in [0, 1) replace the generator's draws (keyed sampling, see `row_uniforms`).
    """
    rows, width = weights.shape
    n_blocks = -(-width // SAMPLE_BLOCK)
    padded = torch.nn.functional.pad(weights, (0, n_blocks * SAMPLE_BLOCK - width))  # zero weight: never drawn
    blocks = padded.view(rows, n_blocks, SAMPLE_BLOCK).sum(-1, dtype=torch.float64).cumsum(-1)  # (B, n)
    total = blocks[:, -1:]
    if not bool(((total > 0) & torch.isfinite(total)).all()):
        raise ValueError("sampling: a row's probabilities are all zero or not finite (NaN or inf logits?)")
    if uniforms is None:
        uniforms = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=weights.device)
    u = uniforms.reshape(total.shape).to(torch.float64) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total even after rounding
    # the first block, then the first column in it, whose running sum exceeds u: its weight is > 0
    block = torch.searchsorted(blocks, u, right=True)  # (B, 1)
    u = u - torch.where(block > 0, blocks.gather(1, (block - 1).clamp_(min=0)), 0.0)
    cols = block * SAMPLE_BLOCK + torch.arange(SAMPLE_BLOCK, device=weights.device)  # (B, SAMPLE_BLOCK)
    inside = padded.gather(1, cols).double().cumsum(-1)
    u = torch.minimum(u.clamp_(min=0.0), torch.nextafter(inside[:, -1:], torch.zeros_like(total)))
    return (block[:, 0] * SAMPLE_BLOCK + torch.searchsorted(inside, u, right=True)[:, 0]).clamp_(max=width - 1)


def choose(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token per row from (B, V) fused logits (`uniforms`: one keyed draw per row, else the generator's)."""
    if config.greedy:
        return first_argmax(logits)
    probs = warp(logits, config).softmax(-1)
    return sample_rows(probs, generator, uniforms)


_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 lanes (wrapping arithmetic): a counter-based hash whose outputs pass
    BigCrush, so hashed counters serve as independent uniform draws."""
    x = x + _signed(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def prompt_key(seed: int, prompt_id: object) -> int:
    """A 63-bit key for one prompt's random stream: the same seed and id give the same draws, whatever batch or
    position the prompt decodes in (so a resumed run samples what the uninterrupted one did)."""
    digest = hashlib.blake2b(f"{seed}\x00{prompt_id!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One uniform in [0, 1) per row, float64: a hash of the row's prompt key and its token position."""
    z = mix64(mix64(keys) + steps)
    return _shr(z, 11).to(torch.float64) * (2.0**-53)
