"""Compare `modelops merge` with mergekit tensor by tensor, one config at a time.

    MERGEKIT_YAML=/path/to/mergekit-venv/bin/mergekit-yaml OMP_NUM_THREADS=1 \
        .venv/bin/python benchmarks/compat_mergekit.py [--only NAME] [--markdown PATH] [--workdir DIR]

modelops claims a mergekit config "runs unchanged"; this checks what that yields. Tiny float32 Llamas are built
from config (base random; m1..m3 = base + 0.02·randn; s1, s2 = base + sparse noise), every config of
`compat_configs.py` runs through `mergekit-yaml` (a separate virtualenv, never imported here) and through
`modelops merge --recipe`, and the outputs are compared in float64. The table is a report: the exit status is 0
whenever the comparison itself ran, whatever it found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_configs import CONFIGS, RANDOM_METHODS

REPO = Path(__file__).resolve().parent.parent
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml") or "mergekit-yaml")
MODELOPS = REPO / ".venv" / "bin" / "modelops"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # max |diff| / max |tensor|: a few ULPs


def build_tokenizer(folder: Path, max_len: int) -> None:
    """A 128-token WordLevel tokenizer; model_max_length differs per model, so the donor choice shows."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, 128)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=max_len
    )
    fast.save_pretrained(folder)


def build_models(root: Path) -> dict[str, Path]:
    """base (random, weights ~0.1) plus fine-tune-like variants whose task vectors are ~20% of the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    base = LlamaForCausalLM(cfg).float().state_dict()
    base = {k: (1.0 if v.dim() == 1 else 0.0) + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    variants = {"base": (0, 1.0), "m1": (1, 1.0), "m2": (2, 1.0), "m3": (3, 1.0), "s1": (11, 0.3), "s2": (12, 0.3)}
    paths = {}
    for name, (seed, keep) in variants.items():
        g = torch.Generator().manual_seed(seed)
        sd = {}
        for k, v in base.items():
            noise = 0.02 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < keep)
            sd[k] = v if name == "base" else v + noise
        model = LlamaForCausalLM(cfg)
        model.load_state_dict(sd)
        paths[name] = root / "models" / name
        model.save_pretrained(paths[name], safe_serialization=True)
        build_tokenizer(paths[name], 1000 + seed)
    return paths


@dataclass
class Run:
    """One tool's run: exit status and the line that explains a failure."""

    rc: int
    last: str = ""

    def status(self) -> str:
        return "ok" if self.rc == 0 else f"error (rc {self.rc}): {self.last.removeprefix('Error: ')[:90]}"


def run_tool(cmd: list[str], log: Path) -> Run:
    """Run one merge CLI offline on one thread; keep the full log, return the last meaningful line."""
    # PYTHONHASHSEED: without a base_model, mergekit takes config and tokenizer from list(set(models))[0]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error") or "Error:" in ln or "error" in ln.split(":")[0].lower()]
    return Run(proc.returncode, (errors or lines or [""])[-1])


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in a folder (shard naming differs between the tools)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[name] = st.get_tensor(name)
    return out


SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def read_json(path: Path) -> dict | None:
    """A side file's content without the writer's transformers version, which is not the merge's business."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data.pop("transformers_version", None)
    return data


def side_file_notes(mk_dir: Path, mo_dir: Path) -> tuple[list[str], list[str]]:
    """Config and tokenizer files: the layer count after slicing (a real difference), and which input the
    tokenizer and config were taken from (informational: mergekit's donor is not always well defined)."""
    layers, info = [], []
    for name in SIDE_FILES:
        a, b = read_json(mk_dir / name), read_json(mo_dir / name)
        if (a is None) != (b is None):
            info.append(f"{name} only in {'mergekit' if b is None else 'modelops'}")
        elif a != b and name == "config.json" and a.get("num_hidden_layers") != b.get("num_hidden_layers"):
            layers.append(f"num_hidden_layers {a.get('num_hidden_layers')} vs {b.get('num_hidden_layers')}")
        elif a != b:
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            info.append(f"{name} differs ({', '.join(f'{k}: {a.get(k)} vs {b.get(k)}' for k in keys[:3])})")
    return layers, info


@dataclass
class Result:
    name: str
    mk: Run
    mo: Run
    compared: int = 0
    max_diff: float = float("nan")
    worst: str = ""
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


def structure_notes(mk: dict[str, torch.Tensor], mo: dict[str, torch.Tensor]) -> list[str]:
    """Name sets, shapes and dtypes: differences here make value comparison moot or partial."""
    notes = []
    only_mk, only_mo = sorted(mk.keys() - mo.keys()), sorted(mo.keys() - mk.keys())
    if only_mk:
        notes.append(f"{len(only_mk)} only in mergekit (e.g. {only_mk[0]})")
    if only_mo:
        notes.append(f"{len(only_mo)} only in modelops (e.g. {only_mo[0]})")
    shapes = [n for n in mk.keys() & mo.keys() if mk[n].shape != mo[n].shape]
    if shapes:
        n = sorted(shapes)[0]
        notes.append(f"{len(shapes)} shape mismatches (e.g. {n}: {tuple(mk[n].shape)} vs {tuple(mo[n].shape)})")
    dtypes = {(str(mk[n].dtype), str(mo[n].dtype)) for n in mk.keys() & mo.keys() if mk[n].dtype != mo[n].dtype}
    if dtypes:
        notes.append("dtype " + ", ".join(f"{a} vs {b}" for a, b in sorted(dtypes)))
    return notes


def value_diffs(mk: dict[str, torch.Tensor], mo: dict[str, torch.Tensor]) -> tuple[dict, dict, float]:
    """max |diff| per shared same-shape tensor, absolute and relative to the tensor's own max |value|, and the
    share of all entries that differ at all (few large diffs = different choices; many tiny = rounding)."""
    absd, reld, unequal, total = {}, {}, 0, 0
    for n in sorted(mk.keys() & mo.keys()):
        if mk[n].shape != mo[n].shape or not mk[n].numel():
            continue
        a, b = mk[n].double(), mo[n].double()
        absd[n] = (a - b).abs().max().item()
        reld[n] = absd[n] / max(a.abs().max().item(), 1e-30)
        unequal, total = unequal + int((a != b).sum()), total + a.numel()
    return absd, reld, unequal / max(total, 1)


def random_stats(mk: dict[str, torch.Tensor], mo: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> str:
    """For seeded-differently methods: share of entries left at the base, and how big each merged update is."""
    kept, num, norm_mk, norm_mo, total = [0, 0], 0.0, 0.0, 0.0, 0
    for n in sorted(mk.keys() & mo.keys() & base.keys()):
        a, b, w = mk[n].double(), mo[n].double(), base[n].double()
        if a.shape != b.shape or a.shape != w.shape:
            continue
        kept[0] += int((a == w).sum())
        kept[1] += int((b == w).sum())
        total += a.numel()
        num += (a - b).pow(2).sum().item()
        norm_mk += (a - w).pow(2).sum().item()
        norm_mo += (b - w).pow(2).sum().item()
    if not total:
        return "no shared tensors"
    return (
        f"at base: mk {kept[0] / total:.3f} / mo {kept[1] / total:.3f}; "
        f"‖Δmo‖/‖Δmk‖ {(norm_mo / max(norm_mk, 1e-300)) ** 0.5:.3f}; ‖mk−mo‖/‖Δmk‖ {(num / max(norm_mk, 1e-300)) ** 0.5:.3f}"
    )


def compare(res: Result, mk_dir: Path, mo_dir: Path, base_dir: Path, recipe: dict) -> None:
    """Fill in the numbers and the verdict of one config whose two runs both succeeded."""
    mk, mo = load_tensors(mk_dir), load_tensors(mo_dir)
    layers, info = side_file_notes(mk_dir, mo_dir)
    res.notes = structure_notes(mk, mo) + layers
    absd, reld, share = value_diffs(mk, mo)
    res.compared = len(absd)
    if absd:
        res.worst = max(absd, key=absd.__getitem__)
        res.max_diff = absd[res.worst]
        res.worst = res.worst if res.max_diff else ""
    if recipe.get("merge_method") in RANDOM_METHODS:
        res.verdict = "random method (expected to differ; compare statistics): " + random_stats(
            mk, mo, load_tensors(base_dir)
        )
    elif res.notes or not absd:
        res.verdict = "differs"
    elif res.max_diff == 0:
        res.verdict = "identical"
    elif all(reld[n] <= TOL.get(mk[n].dtype, 1e-6) for n in reld):
        res.verdict = f"equal to {str(mk[res.worst].dtype).removeprefix('torch.')} rounding"
    else:
        res.verdict = f"differs (rel {reld[res.worst]:.2e}; {share:.1%} of entries differ)"
    if res.notes:
        res.verdict += ": " + "; ".join(res.notes)
    if info:
        donor = "" if recipe.get("base_model") else " (no base_model: mergekit's donor is list(set(models))[0])"
        res.verdict += f" [side files{donor}: " + "; ".join(info) + "]"


def run_config(name: str, text: str, models: dict[str, Path], work: Path) -> Result:
    """Write the config, run both tools into fresh folders, compare when both produced output."""
    import yaml

    for key, path in models.items():
        text = text.replace("{" + key + "}", str(path))
    cfg_dir = work / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg_dir / f"{name}.yaml"
    cfg.write_text(text.lstrip())
    mk_dir, mo_dir = work / "out" / name / "mergekit", work / "out" / name / "modelops"
    for d in (mk_dir, mo_dir):
        shutil.rmtree(d, ignore_errors=True)
    mk_dir.parent.mkdir(parents=True, exist_ok=True)
    mk = run_tool([str(MERGEKIT), str(cfg), str(mk_dir), "--lazy-unpickle", "--random-seed", "0", "--quiet"],
                  mk_dir.parent / "mergekit.log")  # fmt: skip
    mo = run_tool(
        [str(MODELOPS), "merge", "--recipe", str(cfg), "--out", str(mo_dir), "-q"], mo_dir.parent / "modelops.log"
    )
    res = Result(name, mk, mo)
    if mk.rc != 0:
        res.verdict = "mergekit error"
    elif mo.rc != 0:
        res.verdict = "modelops error"
    else:
        compare(res, mk_dir, mo_dir, models["base"], yaml.safe_load(text))
    return res


def cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(results: list[Result]) -> str:
    rows = [
        "| config | mergekit | modelops | tensors compared | max abs diff | worst tensor | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        diff = "" if r.max_diff != r.max_diff else f"{r.max_diff:.3g}"
        rows.append(
            "| "
            + " | ".join(
                cell(x) for x in (r.name, r.mk.status(), r.mo.status(), str(r.compared or ""), diff, r.worst, r.verdict)
            )
            + " |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only this config (see compat_configs.py)")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--workdir", type=Path, help="keep models, configs, outputs and logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    configs = [(n, t) for n, t in CONFIGS if args.only in (None, n)]
    if not configs:
        ap.error(f"unknown config {args.only!r}; known: {', '.join(n for n, _ in CONFIGS)}")
    if not MERGEKIT.exists():
        ap.error(
            f"{MERGEKIT} not found: install mergekit==0.1.5 in a separate virtualenv (it needs transformers >= 5) "
            "and set MERGEKIT_YAML=/path/to/that/venv/bin/mergekit-yaml"
        )
    if not MODELOPS.exists():
        ap.error(f"{MODELOPS} not found: run scripts/setup.sh first")
    torch.set_num_threads(1)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="compat-mergekit-")
    work = args.workdir or Path(tmp.name)
    try:
        models = build_models(work)
        results = []
        for name, text in configs:
            results.append(run_config(name, text, models, work))
            print(f"{name}: {results[-1].verdict}", file=sys.stderr, flush=True)
        table = markdown(results)
        print(table)
        if args.markdown:
            args.markdown.write_text(table)
    finally:
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
