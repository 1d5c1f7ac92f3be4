"""Decode-time operations as the public API: the co-decoder and fused decoding of a prompts file (resumable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.checkpoint import Checkpoint
from modelops.checkpoint.rows import ResumableRows, check_rows_target
from modelops.decode import CoDecoder, FusionRule
from modelops.decode.api import DecodeRun, run_decode
from modelops.decode.api import build_decoder as load_decoder
from modelops.decode.sampling import SamplingConfig
from modelops.decode.spec import DecodeSpec, load_spec, read_prompts
from modelops.errors import ModelopsError
from modelops.plots import alpha_trace_png
from modelops.provenance import fingerprint_sha256
from modelops.version import __version__

__all__ = [
    "CoDecoder", "DecodeRun", "DecodeSpec", "FusionRule", "SamplingConfig", "decode_key", "decode_spec",
    "fuse_decode", "load_decoder", "model_fingerprint", "read_prompts",
]  # fmt: skip


def decode_spec(recipe: Path | None = None, **overrides: Any) -> DecodeSpec:
    """A fused-decoding configuration from a recipe file and/or keyword overrides (large, small_base, experts,
    rule, weights, ...); every value is checked, and zoo roles are resolved."""
    return load_spec(Path(recipe) if recipe is not None else None, overrides)


def model_fingerprint(spec: str, *, allow_pickle: bool = False) -> str:
    """The model's content fingerprint (names, shapes, sampled bytes), or "unavailable" when it cannot be read."""
    try:
        checkpoint = Checkpoint.open(spec, allow_pickle=allow_pickle)
    except (ModelopsError, OSError):
        return "unavailable"
    try:
        return fingerprint_sha256(checkpoint)
    finally:
        checkpoint.close()


def decode_key(spec: DecodeSpec, rows: list[dict[str, Any]], *, score: bool, **load: Any) -> dict[str, Any]:
    """What a resumed fused decode must share with the interrupted one, part by part (a mismatch names the part)."""
    import hashlib
    import json

    models = [spec.large, *([spec.small_base] if spec.small_base else []), *spec.experts]
    allow_pickle = bool(load.get("allow_pickle"))
    return {
        "recipe": {k: v for k, v in spec.to_dict().items() if k not in ("large", "small_base", "experts")},
        "models": {m: model_fingerprint(m, allow_pickle=allow_pickle) for m in models},
        "prompts": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
        "mode": "score" if score else "generate",
        "dtype": load.get("dtype"),
        "version": __version__,
    }


def fuse_decode(
    spec: DecodeSpec,
    prompts: Path | list[dict[str, Any]],
    out: Path | None = None,
    *,
    score: bool = False,
    batch_size: int = 8,
    continuous: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    decoder: CoDecoder | None = None,
    **load: Any,
) -> DecodeRun:
    """Generate (or, with `score`, teacher-force the continuations of) every prompt row under the spec's rule.

    With `out`, rows are appended to a hidden partial file as they finish and the complete file, in prompt order,
    replaces `out` at the end; `resume` keeps the finished rows of an interrupted run with the same recipe, models,
    sampling, seed and prompts (and refuses, naming the difference, otherwise). Greedy and seeded runs give the
    same rows resumed or not: each prompt samples from its own stream. `load` goes to `load_decoder`."""
    path = Path(prompts) if isinstance(prompts, (str, Path)) else None
    rows = read_prompts(path, need_continuation=score) if path is not None else list(prompts)
    if out is None:
        return _decode(spec, rows, decoder, load, score=score, batch_size=batch_size, continuous=continuous,
                       progress=progress)  # fmt: skip
    check_rows_target(Path(out), inputs=[path] if path else [], overwrite=overwrite)  # before any model is read
    key = decode_key(spec, rows, score=score, **load)
    with ResumableRows(Path(out), key=key, resume=resume, overwrite=overwrite, inputs=[path] if path else []) as sink:
        todo = [r for r in rows if r["id"] not in sink.done]
        if progress is not None and len(todo) < len(rows):
            progress(len(rows) - len(todo))
        run = DecodeRun([], 0.0, 0)
        if todo:
            run = _decode(spec, todo, decoder, load, score=score, batch_size=batch_size, continuous=continuous,
                          progress=progress, on_row=sink.add)  # fmt: skip
        run.stats["resumed_rows"] = len(rows) - len(todo)
        run.rows = sink.finish([r["id"] for r in rows])
    picture = alpha_trace_png(run.rows, alpha_trace_path(Path(out))) if spec.rule == "dlf" and not score else None
    if picture is not None:
        run.stats["alpha_trace"] = str(picture)
    return run


def alpha_trace_path(out: Path) -> Path:
    """Where a DLF decode's α trace is drawn: beside its results (`results.jsonl` → `results.alpha_trace.png`)."""
    return out.with_name(f"{out.stem}.alpha_trace.png")


def _decode(
    spec: DecodeSpec,
    rows: list[dict[str, Any]],
    decoder: CoDecoder | None,
    load: dict[str, Any],
    **options: Any,
) -> DecodeRun:
    """One decode of `rows`, on the given decoder or one loaded (and closed) here."""
    own = decoder is None
    decoder = decoder or load_decoder(spec, **load)
    try:
        return run_decode(decoder, spec, rows, on_batch=options.pop("progress"), **options)
    finally:
        if own:
            decoder.close()
