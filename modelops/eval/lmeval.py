"""Any modelops system as an lm-eval model: `--model modelops` with a fused recipe, or large/small_base/expert(s).

Importing this module registers the model with lm-eval (the optional extra: `pip install "modelops[lm-eval]"`).
`modelops-lm-eval` is lm-eval's own command line with the model registered, since lm-eval 0.4 cannot discover
out-of-tree models by itself; from Python, import this module before `lm_eval.simple_evaluate(model="modelops")`.

The class extends lm-eval's `TemplateLM`, so contexts and continuations are split into tokens exactly as lm-eval's
own `hf` backend splits them; the co-decoder then scores or generates. With a zero fusion delta (weight 0, or the
expert equal to the small base) every number equals the `hf` backend's for the large model alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from modelops.decode.api import build_decoder
from modelops.decode.sampling import SamplingConfig
from modelops.decode.spec import load_spec
from modelops.decode.types import SEARCH_RULES
from modelops.devices import pick_device
from modelops.errors import ModelopsError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (
        handle_stop_sequences,
        normalize_gen_kwargs,
        postprocess_generated_text,
        resolve_max_length,
    )  # fmt: skip
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as exc:  # the optional extra is not installed
    raise ModelopsError(
        f"lm-eval is not installed ({exc.name} missing); install it with: pip install 'modelops[lm-eval]'"
    ) from None

logger = logging.getLogger(__name__)

LIST_SEPARATOR = "|"  # lm-eval splits model_args on commas: several experts or weights are joined by "|"


def _listed(value: Any, cast: type = str) -> list[Any] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(LIST_SEPARATOR)
    return [cast(v) for v in items]


def _device(name: str) -> str:
    """lm-eval's `--device` (cuda:0 by default) where it exists, else the best one here, as its hf backend does."""
    import torch

    if str(name).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("lm-eval asked for %s, which this machine does not have; using %s", name, pick_device("auto"))
        return "auto"
    return str(name)


@register_model("modelops")
class ModelopsLM(TemplateLM):
    """A modelops system under lm-eval: `recipe=recipes/eft.yaml`, or `large=…,small_base=…,expert=…,rule=…`
    (`expert=a|b`, `weight=0.5|0.5` for several). Without small models it is the large model alone."""

    def __init__(
        self,
        recipe: str | None = None,
        large: str | None = None,
        pretrained: str | None = None,
        small_base: str | None = None,
        expert: str | None = None,
        rule: str | None = None,
        weight: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        parallel_models: bool = False,
        trust_remote_code: bool = False,
        decoder: Any = None,
        **spec: Any,
    ) -> None:
        super().__init__()
        experts = _listed(expert)
        overrides = {"large": large or pretrained, "small_base": small_base, "experts": experts, "rule": rule,
                     "weights": _listed(weight, float), **spec}  # fmt: skip
        self.spec = load_spec(Path(recipe) if recipe else None, overrides) if decoder is None else None
        self.decoder = decoder or build_decoder(
            self.spec, device=_device(device), dtype=dtype, parallel=str(parallel_models).lower() in ("1", "true"),
            trust_remote_code=str(trust_remote_code).lower() in ("1", "true"),
        )  # fmt: skip
        self.seed = self.spec.sampling.seed if self.spec is not None else None
        self.tokenizer = self.decoder.tokenizer
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = int(max_length) if max_length else None
        self.max_gen_toks = int(max_gen_toks)

    # -- what TemplateLM needs ----------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context starts from (as the hf backend): BOS when the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self.decoder.members[0].model.config, self.tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The tokenizer's own defaults unless told, and no second BOS when the text already starts with one."""
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            options["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **options)
        cut = kwargs.get("left_truncate_len")
        return ids[-cut:] if cut else ids

    def tok_decode(self, tokens: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[tuple]:
        """(Σ log p̃ of the continuation, whether every token is the fused argmax): one parallel forward per
        model, the input cut to the last max_length + 1 tokens as the hf backend cuts it."""
        contexts, continuations = [], []
        for _, context_enc, continuation_enc in requests:
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]
            cut = len(whole) - len(continuation_enc)
            contexts.append(whole[: max(cut, 1)])
            continuations.append(whole[max(cut, 1) :])
        scored = self.decoder.score_ids(contexts, continuations, batch_size=self.batch_size)
        out = []
        for request, (logps, greedy) in zip(requests, scored, strict=True):
            answer = (float(sum(logps)), bool(all(greedy)))
            if request[0] is not None:
                self.cache_hook.add_partial("loglikelihood", request[0], answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Σ log p̃ of the whole text, scored in disjoint windows of max_length tokens (as the hf backend)."""
        windows, owner = [], []
        for i, (text,) in enumerate(r.args for r in requests):
            tokens = self.tok_encode(text)
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1),
            ):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows), strict=True):
            totals[i] += logp
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The co-decoder on every context, grouped by generation settings; lm-eval's stop sequences end a row
        and are cut from its text, as the hf backend cuts them."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        groups: dict[str, list[int]] = defaultdict(list)
        settings: dict[str, tuple[dict, list[str]]] = {}
        for i, request in enumerate(requests):
            _, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            key = repr((sorted(kwargs.items()), until))
            groups[key].append(i)
            settings[key] = (kwargs, until)
        out: list[str] = [""] * len(requests)
        for key, rows in groups.items():
            kwargs, until = settings[key]
            sampling = SamplingConfig(
                max_new_tokens=int(kwargs["max_gen_toks"]), temperature=float(kwargs.get("temperature") or 0.0),
                top_p=float(kwargs.get("top_p") or 1.0), stop=[u for u in until if u and u != eos],
                seed=int(kwargs["seed"]) if kwargs.get("seed") is not None else self.seed,
            )  # fmt: skip
            max_context = self.max_length - sampling.max_new_tokens
            contexts = [self._fit(requests[i].args[0], max_context) for i in rows]
            generations = self.decoder.generate(contexts, sampling, ids=rows, batch_size=self.batch_size)
            for i, gen in zip(rows, generations, strict=True):
                out[i] = postprocess_generated_text(gen.text, until, None)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _fit(self, context: str, max_tokens: int) -> str | list[int]:
        """The context, or its last `max_tokens` token ids when it is longer, as the hf backend cuts it (no
        special token re-added). The search rules read text: for them the cut ids are decoded back to text."""
        ids = self.tok_encode(context)
        if len(ids) <= max_tokens:
            return context
        if self.decoder.rule.name in SEARCH_RULES:
            return self.tok_decode(ids[-max_tokens:], skip_special_tokens=False)
        return ids[-max_tokens:]


def main() -> None:
    """`modelops-lm-eval …`: lm-eval's command line, unchanged, with `--model modelops` available."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


# -- the zoo's tasks as lm-eval tasks -------------------------------------------------------------------------------
ZOO_LM_EVAL_TASKS = ("zoo_facts", "zoo_facts_mc", "zoo_facts_text")


def write_zoo_tasks(rows: list[dict[str, Any]], max_new_tokens: int, folder: Path) -> Path:
    """The zoo's facts task three ways, as local lm-eval tasks in `folder`: generated answers (`zoo_facts`,
    generate_until, exact match), the answer among four (`zoo_facts_mc`, loglikelihood, the distractors being
    other rows' answers) and the facts as text (`zoo_facts_text`, loglikelihood_rolling)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    answers = sorted({r["reference"] for r in rows})
    mc = []
    for i, r in enumerate(rows):
        others = [a for a in answers if a != r["reference"]]
        distractors = [others[(i * 7 + k * 13) % len(others)] for k in range(3)] if len(others) >= 3 else others
        choices = list(dict.fromkeys(distractors))
        label = i % (len(choices) + 1)
        choices.insert(label, r["reference"])
        mc.append({"question": r["prompt"], "choices": [" " + c for c in choices], "label": label})
    data = {
        "zoo_facts": [{"question": r["prompt"], "answer": r["reference"]} for r in rows],
        "zoo_facts_mc": mc,
        "zoo_facts_text": [{"text": f"{r['prompt']} {r['reference']}"} for r in rows],
    }
    bodies = {
        "zoo_facts": 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        f"generation_kwargs:\n  until: []\n  max_gen_toks: {max_new_tokens}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
        "zoo_facts_mc": 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        "zoo_facts_text": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n",
    }
    for task, body in bodies.items():
        path = folder / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data[task]))
        head = f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
        (folder / f"{task}.yaml").write_text(head + body)
    return folder
