"""The build's steps, in order; each skips itself when its output folder is already complete."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from modelops.checkpoint import AtomicOutput
from modelops.runtime.generate import generate
from modelops.zoo import world as W
from modelops.zoo.layout import MODEL_META, folder_bytes, is_complete, sub_seed
from modelops.zoo.presets import Preset, Stage
from modelops.zoo.scores import MAX_NEW, score_model
from modelops.zoo.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from modelops.zoo.train import ModelSize, dpo, make_model, n_params, pretrain, sft

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """What the build reports: one bar per model (steps, loss)."""

    def start(self, name: str, total: int) -> None: ...
    def tick(self, loss: float) -> None: ...
    def finish(self, name: str, meta: dict) -> None: ...


class NullProgress:
    def start(self, name: str, total: int) -> None:
        pass

    def tick(self, loss: float) -> None:
        pass

    def finish(self, name: str, meta: dict) -> None:
        pass


class Builder:
    """Holds the world, tokenizer and token stream; trains and saves each missing model."""

    def __init__(self, preset: Preset, seed: int, out: Path, progress: Progress) -> None:
        self.p, self.seed, self.out, self.progress = preset, seed, out, progress
        self.world = W.make_world(preset.world, seed)
        self.data_seconds = 0.0
        self._stream: torch.Tensor | None = None

    # -- data ---------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._data()
        tasks = self.p.tasks
        models: dict[str, Any] = {
            "small_base": self._base("small_base", self.p.small, self.p.pretrain_small),
            "large_base": self._base("large_base", self.p.large, self.p.pretrain_large),
            "sft": {t: self._sft(f"sft_{t}", "small_base", t, self.p.sft_small[t]) for t in tasks},
        }
        models.update(self._dpo("sft_review"))
        models["large_sft"] = {t: self._sft(f"large_sft_{t}", "large_base", t, self.p.sft_large[t]) for t in tasks}
        return models

    def _docs(self) -> list[str]:
        return W.pretraining_documents(self.world, sub_seed(self.seed, "corpus"))

    def _data(self) -> None:
        """Tokenizer (trained on the corpus) and the held-out JSONL files, each written atomically."""
        t0 = time.perf_counter()
        tok_dir, eval_dir = self.out / "tokenizer", self.out / "eval"
        if not (tok_dir / "tokenizer.json").is_file():
            tok = train_tokenizer(self._docs(), W.vocabulary(self.world))
            with AtomicOutput(tok_dir, overwrite=True) as tmp:
                save_tokenizer(tok, tmp)
        self.tok = load_tokenizer(tok_dir)
        self.vocab_size = len(self.tok)
        self.evals = {t: W.eval_rows(self.world, t) for t in self.p.tasks}
        self.eval_sizes = {t: len(rows) for t, rows in self.evals.items()}
        if not (eval_dir / "world.json").is_file():
            with AtomicOutput(eval_dir, overwrite=True) as tmp:
                for task, rows in self.evals.items():
                    (tmp / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                (tmp / "world.json").write_text(json.dumps(self._world_summary(), indent=1) + "\n")
        self.data_seconds = time.perf_counter() - t0

    def _world_summary(self) -> dict:
        w = self.world
        return {
            "cities": w.cities,
            "colours": W.COLOURS[: w.config.colours],
            "entity_groups": {g: [[e.name, e.city, e.colour] for e in es] for g, es in w.groups.items()},
            "addition_pairs": {k: len(v) for k, v in w.pairs.items()},
            "products": w.products,
            "reward": "modelops.zoo.world:reward",
        }

    def stream(self) -> torch.Tensor:
        if self._stream is None:
            docs = self.tok.backend_tokenizer.encode_batch(self._docs(), add_special_tokens=False)
            self._stream = torch.tensor([i for doc in docs for i in doc.ids], dtype=torch.long)
            logger.info("pre-training stream: %d tokens", len(self._stream))
        return self._stream

    # -- models -------------------------------------------------------------------------------------------------
    def _specials(self) -> dict[str, int]:
        return {"bos": self.tok.bos_token_id, "eos": self.tok.eos_token_id, "pad": self.tok.pad_token_id}

    def _load(self, name: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.out / name, dtype=torch.float32).eval()

    def _meta(self, name: str) -> dict:
        folder = self.out / name
        return {"path": name, **json.loads((folder / MODEL_META).read_text()), "bytes": folder_bytes(folder)}

    def _save(self, name: str, model: Any, meta: dict, t0: float) -> dict:
        """Score the model on every task, then write weights + tokenizer + meta atomically."""
        t1 = time.perf_counter()
        meta["scores"] = score_model(model, self.tok, self.evals)
        meta["train_seconds"] = round(t1 - t0, 1)
        meta["eval_seconds"] = round(time.perf_counter() - t1, 1)
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        meta["params"] = n_params(model)
        with AtomicOutput(self.out / name, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            save_tokenizer(self.tok, tmp)
            (tmp / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
        self.progress.finish(name, meta)
        return self._meta(name)

    def _base(self, name: str, size: ModelSize, st: Stage) -> dict:
        if is_complete(self.out / name):
            return self._meta(name)
        stream = self.stream()
        self.progress.start(name, st.steps)
        t0 = time.perf_counter()
        model = make_model(size, self.vocab_size, self._specials(), sub_seed(self.seed, name))
        # Both bases see exactly the same windows (same sampling seed): equal tokens, not equal CPU time.
        loss = pretrain(
            model, stream, steps=st.steps, batch=st.batch, seq_len=self.p.seq_len, lr=st.lr,
            seed=sub_seed(self.seed, "pretrain-windows"), tick=self.progress.tick,
        )  # fmt: skip
        meta = {"role": name, "hidden": size.hidden, "layers": size.layers, "init_from": None,
                "steps": st.steps, "batch": st.batch, "lr": st.lr, "tokens": st.steps * st.batch * self.p.seq_len,
                "final_loss": round(loss, 4), "seed": self.seed}  # fmt: skip
        return self._save(name, model, meta, t0)

    def _examples(self, task: str) -> list[tuple[list[int], list[int]]]:
        eos = self.tok.eos_token_id
        pairs = W.sft_examples(self.world, task, sub_seed(self.seed, f"sft-data:{task}"))
        return [(self.tok(q).input_ids, [*self.tok(a, add_special_tokens=False).input_ids, eos]) for q, a in pairs]

    def _sft(self, name: str, init: str, task: str, st: Stage) -> dict:
        if is_complete(self.out / name):
            return self._meta(name)
        self.progress.start(name, st.steps)
        t0 = time.perf_counter()
        model = self._load(init)
        examples = self._examples(task)
        loss = sft(
            model, examples, steps=st.steps, batch=st.batch, lr=st.lr, pad_id=self.tok.pad_token_id,
            seed=sub_seed(self.seed, name), tick=self.progress.tick,
        )  # fmt: skip
        meta = {"role": name, "task": task, "init_from": init, "examples": len(examples), "steps": st.steps,
                "batch": st.batch, "lr": st.lr, "final_loss": round(loss, 4), "seed": self.seed}  # fmt: skip
        return self._save(name, model, meta, t0)

    def _pairs(self, model: Any) -> tuple[list[tuple[list[int], list[int], list[int]]], dict]:
        """Preference pairs: for each prompt, best vs worst (gold reward) of `dpo_samples` SFT samples."""
        k = self.p.dpo_samples
        prompts = W.review_prompts(self.world, "train") * self.p.dpo_prompt_repeats
        random.Random(sub_seed(self.seed, "dpo-prompts")).shuffle(prompts)
        ids = [self.tok(q).input_ids for q in prompts for _ in range(k)]
        g = torch.Generator().manual_seed(sub_seed(self.seed, "dpo-samples"))
        outs = generate(
            model, ids, max_new=MAX_NEW["review"], eos_id=self.tok.eos_token_id, pad_id=self.tok.pad_token_id,
            temperature=1.0, generator=g,
        )  # fmt: skip
        eos = self.tok.eos_token_id
        rewards = [
            W.reward(
                prompts[i // k], self.tok.decode(o, skip_special_tokens=True) + ("" if o[-1:] == [eos] else " ...")
            )
            for i, o in enumerate(outs)
        ]
        pairs, chosen_r, rejected_r = [], [], []
        for j in range(len(prompts)):
            group = rewards[j * k : (j + 1) * k]
            best, worst = max(range(k), key=group.__getitem__), min(range(k), key=group.__getitem__)
            if group[best] > group[worst]:
                pairs.append((ids[j * k], outs[j * k + best], outs[j * k + worst]))
                chosen_r.append(group[best])
                rejected_r.append(group[worst])
        stats = {
            "pairs": len(pairs),
            "sample_reward": round(sum(rewards) / len(rewards), 4),
            "chosen_reward": round(sum(chosen_r) / max(1, len(chosen_r)), 4),
            "rejected_reward": round(sum(rejected_r) / max(1, len(rejected_r)), 4),
        }
        return pairs, stats

    def _dpo(self, init: str) -> dict[str, dict]:
        names = ("dpo_partial", "dpo_full")
        if all(is_complete(self.out / n) for n in names):
            return {n: self._meta(n) for n in names}
        st = self.p.dpo
        partial_step = max(1, round(st.steps * self.p.dpo_partial_fraction))
        t0 = time.perf_counter()
        policy, reference = self._load(init), self._load(init)
        pairs, stats = self._pairs(reference)
        self.progress.start("dpo", st.steps)
        res = dpo(
            policy, reference, pairs, steps=st.steps, batch=st.batch, lr=st.lr, beta=self.p.dpo_beta,
            nll_weight=self.p.dpo_nll_weight, pad_id=self.tok.pad_token_id, seed=sub_seed(self.seed, "dpo"),
            snapshot_at=(partial_step,), tick=self.progress.tick,
        )  # fmt: skip
        common = {"task": "review", "init_from": init, "batch": st.batch, "lr": st.lr, "beta": self.p.dpo_beta,
                  "nll_weight": self.p.dpo_nll_weight, "seed": self.seed, **stats}  # fmt: skip
        if not is_complete(self.out / "dpo_partial"):
            partial = self._load(init)
            partial.load_state_dict(res.snapshots[partial_step])
            meta = {"role": "dpo_partial", "steps": partial_step,
                    "final_loss": round(res.snapshot_losses[partial_step], 4), **common}  # fmt: skip
            self._save("dpo_partial", partial, meta, t0)
        if not is_complete(self.out / "dpo_full"):
            meta = {"role": "dpo_full", "steps": st.steps, "final_loss": round(res.loss, 4),
                    "pair_accuracy": round(res.pair_accuracy, 4), **common}  # fmt: skip
            self._save("dpo_full", policy, meta, t0)
        return {n: self._meta(n) for n in names}
