"""The prepared check for a lent GPU: CUDA correctness of the co-decoder and of a merge, then throughput at a real
vocabulary and depth, printed as one table (docs/benchmarks.md#gpu). `--dry` runs the same plumbing on CPU with tiny
float32 models in seconds (CI runs it); on a GPU it takes a few minutes.

Correctness (greedy, the GPU's dtype): weight-0 fused EFT equals the large model's own `generate`, row by row, at
batch 1 and 8; speculative EFT (K = 4) equals plain EFT; scored log-probs equal log_softmax of a full forward; a TIES
merge with the tensors on the GPU equals the CPU merge. Throughput (random from-config Llama models, no EOS, so every
row decodes the same number of tokens): tokens/s of the large model alone, of the sum of the three models' own
`generate` loops, of fused EFT and DLF, and of speculative EFT, at each batch and vocabulary; and the host syncs per
fused step and per speculative token (`torch.cuda.set_sync_debug_mode`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

SHAPES = {  # name: (hidden, layers, heads, kv heads, intermediate)
    "large": (2048, 16, 16, 8, 5632),  # ~1.1B with a 32k vocabulary
    "small": (768, 12, 12, 4, 2048),  # ~150M
}
DRY_SHAPES = {"large": (64, 2, 4, 2, 128), "small": (32, 2, 4, 2, 64)}


def tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over w0 … w{vocab−2} and <pad>, with no end-of-sequence token: rows never stop early."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, **{f"w{i}": i + 1 for i in range(vocab - 1)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>")


def model(shape: tuple[int, ...], vocab: int, seed: int, dtype: torch.dtype, device: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = shape
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)  # fmt: skip
    m = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    m.generation_config.eos_token_id = None
    return m


def prompts(n: int, vocab: int, words: int = 24) -> list[str]:
    g = torch.Generator().manual_seed(n)
    return [" ".join(f"w{i}" for i in torch.randint(1, vocab - 1, (words,), generator=g).tolist()) for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def own_generate(m: Any, tok: Any, texts: list[str], new: int, device: str) -> list[list[int]]:
    """The model's own greedy `generate`, one prompt at a time (no padding): the reference rows."""
    out = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]], device=device)
        with torch.no_grad():
            gen = m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


def own_loop_seconds(m: Any, tok: Any, texts: list[str], new: int, device: str) -> float:
    """One batched greedy `generate` (left-padded), timed: a model's own loop."""
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True).to(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        m.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    sync(device)
    return time.perf_counter() - start


def codecoder(members: list[Any], tok: Any, rule: Any) -> Any:
    from modelops.api import CoDecoder
    from modelops.decode.models import Member

    roles = ["large", "base", *["expert"] * (len(members) - 2)]
    return CoDecoder([Member(r, f"mem:{r}", m, tok) for r, m in zip(roles, members, strict=True)], rule)


def correctness(args: argparse.Namespace, dtype: torch.dtype, shapes: dict) -> list[tuple[str, str, bool]]:
    from modelops import api

    vocab, new = args.vocabs[0], args.new_tokens
    tok = tokenizer(vocab)
    large = model(shapes["large"], vocab, 0, dtype, args.device)
    base, expert = (model(shapes["small"], vocab, s, dtype, args.device) for s in (1, 2))
    rows: list[tuple[str, str, bool]] = []
    texts = prompts(8, vocab)
    reference = own_generate(large, tok, texts, new, args.device)
    zero = codecoder([large, base, expert], tok, api.FusionRule("eft", weights=[0.0]))
    sampling = api.SamplingConfig(max_new_tokens=new)
    for batch in (1, 8):
        got = [g.token_ids for g in zero.generate(texts, sampling, batch_size=batch)]
        same = sum(a == b for a, b in zip(got, reference, strict=True))
        rows.append((f"weight-0 fused EFT = large `generate` (batch {batch})", f"{same}/8 rows identical", same == 8))
    plain = codecoder([large, base, expert], tok, api.FusionRule("eft"))
    spec = codecoder([large, base, expert], tok, api.FusionRule("eft", speculative=4))
    a = [g.token_ids for g in plain.generate(texts, sampling, batch_size=8)]
    b = [g.token_ids for g in spec.generate(texts, sampling, batch_size=8)]
    same = sum(x == y for x, y in zip(a, b, strict=True))
    rows.append(("speculative EFT (K = 4) = plain EFT (batch 8)", f"{same}/8 rows identical", same == 8))
    conts = [" ".join(t.split()[:6]) for t in prompts(8, vocab, words=6)]
    scored = zero.score(texts, conts)
    worst = 0.0
    for text, cont, lps in zip(texts, conts, scored, strict=True):
        ids = tok(text)["input_ids"] + tok(cont)["input_ids"]
        with torch.no_grad():
            logits = large(torch.tensor([ids], device=args.device)).logits[0].float()
        n = len(lps)
        want = logits.log_softmax(-1)[len(ids) - n - 1 : len(ids) - 1].gather(
            1, torch.tensor(ids[-n:], device=args.device)[:, None]
        )
        worst = max(worst, float((torch.tensor(lps) - want[:, 0].cpu()).abs().max()))
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    rows.append(
        ("weight-0 scores = log_softmax of a full forward", f"max abs Δ {worst:.2e} (tol {tol:g})", worst <= tol)
    )
    rows.append(merge_check(args, shapes))
    return rows


def merge_check(args: argparse.Namespace, shapes: dict) -> tuple[str, str, bool]:
    """TIES of two fine-tunes of a small model, tensors on the device vs on the CPU: equal to rounding."""
    from safetensors.torch import load_file

    from modelops import api

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = tokenizer(args.vocabs[0])
        for seed, name in ((1, "base"), (2, "ft1"), (3, "ft2")):
            m = model(shapes["small"], args.vocabs[0], seed if name == "base" else 1, torch.bfloat16, "cpu")
            if name != "base":
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(torch.randn_like(p) * 0.01, alpha=seed)
            m.save_pretrained(root / name)
            tok.save_pretrained(root / name)
        recipe = {"merge_method": "ties", "base_model": str(root / "base"), "parameters": {"density": 0.5},
                  "models": [{"model": str(root / m), "parameters": {"weight": 1.0}} for m in ("ft1", "ft2")]}  # fmt: skip
        api.merge(recipe, root / "on_cpu", device="cpu")
        api.merge(recipe, root / "on_device", device=args.device)
        a, b = load_file(root / "on_cpu" / "model.safetensors"), load_file(root / "on_device" / "model.safetensors")
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        scale = max(float(a[k].float().abs().max()) for k in a)
    ok = a.keys() == b.keys() and worst <= scale * 2**-7  # one bf16 rounding step at the largest magnitude
    return (f"TIES merge with --device {args.device} = CPU merge", f"max abs Δ {worst:.2e} (bf16 output)", ok)


def throughput(args: argparse.Namespace, dtype: torch.dtype, shapes: dict) -> list[dict[str, Any]]:
    from modelops import api

    out = []
    for vocab in args.vocabs:
        tok = tokenizer(vocab)
        large = model(shapes["large"], vocab, 0, dtype, args.device)
        base, expert = (model(shapes["small"], vocab, s, dtype, args.device) for s in (1, 2))
        sampling = api.SamplingConfig(max_new_tokens=args.new_tokens)
        decoders = {
            "large alone": codecoder([large, base, expert], tok, api.FusionRule("single")),
            "fused EFT": codecoder([large, base, expert], tok, api.FusionRule("eft")),
            "fused DLF": codecoder([large, base, expert], tok, api.FusionRule("dlf")),
            "speculative EFT K=4": codecoder([large, base, expert], tok, api.FusionRule("eft", speculative=4)),
        }
        for batch in args.batches:
            texts = prompts(batch, vocab)
            tokens = batch * args.new_tokens
            own = sum(own_loop_seconds(m, tok, texts, args.new_tokens, args.device) for m in (large, base, expert))
            row = {"vocab": vocab, "batch": batch, "sum of own loops": tokens / own}
            for name, decoder in decoders.items():
                decoder.generate(texts[:1], api.SamplingConfig(max_new_tokens=2), batch_size=1)  # warm-up
                sync(args.device)
                start = time.perf_counter()
                decoder.generate(texts, sampling, batch_size=batch)
                sync(args.device)
                row[name] = tokens / (time.perf_counter() - start)
            row["syncs per fused step"] = syncs_per_step(decoders["fused EFT"], texts, args)
            row["syncs per speculative token"] = syncs_per_step(decoders["speculative EFT K=4"], texts, args)
            out.append(row)
        del large, base, expert, decoders
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def syncs_per_step(decoder: Any, texts: list[str], args: argparse.Namespace) -> str:
    """Host syncs per generated position (a fused step, or a speculative round's share of one), counted by CUDA's
    sync debug mode (CPU: not applicable)."""
    if not args.device.startswith("cuda"):
        return "n/a (CPU)"
    from modelops.api import SamplingConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            decoder.generate(texts, SamplingConfig(max_new_tokens=args.new_tokens), batch_size=len(texts))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return f"{sum('synchroniz' in str(w.message) for w in caught) / args.new_tokens:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="tiny float32 models on CPU: check the script's plumbing")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.dry:
        args.device, dtype, shapes = "cpu", torch.float32, DRY_SHAPES
        args.vocabs, args.batches, args.new_tokens = [1000, 2000], [1, 8], 8
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry to check the script on CPU", file=sys.stderr)
            return 2
        args.device, dtype, shapes = "cuda", torch.bfloat16, SHAPES
        args.vocabs, args.batches, args.new_tokens = [32000, 128000], [1, 8, 32], 64
    torch.set_num_threads(1)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (dry run: tiny float32 models)"
    print(f"modelops GPU check on {where}, torch {torch.__version__}, {dtype}\n")
    checks = correctness(args, dtype, shapes)
    print("| check | result | ok |\n|---|---|---|")
    for name, result, ok in checks:
        print(f"| {name} | {result} | {'ok' if ok else 'FAILED'} |")
    rows = throughput(args, dtype, shapes)
    names = [k for k in rows[0] if k not in ("vocab", "batch")]
    print("\ntokens/s (ratio to the sum of the three own loops in brackets)\n")
    print("| vocab | batch | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for row in rows:
        own = row["sum of own loops"]
        cells = [f"{row[k]:.0f}" if k == "sum of own loops" else (f"{row[k]:.0f} ({row[k] / own:.2f}×)" if isinstance(
            row[k], float) else str(row[k])) for k in names]  # fmt: skip
        print(f"| {row['vocab']} | {row['batch']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"device": where, "checks": checks, "throughput": rows}, indent=1))
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
