"""Model cards for every folder modelops writes, built offline from the folder's `modelops_recipe.yaml`.

The card records how the model was made: every input (repo id, revision, commit, content fingerprint), the method and
its paper, the exact recipe, the modelops version and any measured numbers. Metadata goes through
`huggingface_hub.ModelCardData`, so the Hub indexes `base_model`, `base_model_relation`, `library_name` and tags.
Writing a card never touches the network: only `ModelCard.from_template` (local Jinja) and a file write.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from modelops.checkpoint.output import TMP_MARK
from modelops.checkpoint.resume import PARTIAL_MARK
from modelops.errors import OutputError, RecipeError
from modelops.provenance import MethodDescription

ALPHA_CURVE_PNG = "alpha_curve.png"  # an α search drawn beside the weights (see api.publish); the card shows it

logger = logging.getLogger(__name__)

RECIPE_FILE = "modelops_recipe.yaml"
CARD_FILE = "README.md"
PROJECT_URL = "https://github.com/modelops/modelops"  # used when the package metadata is not installed
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

DEFAULT_TEMPLATE = """---
{{ card_data }}
---

{{ default_body }}
"""

_BODY = """# {{ title }}

This model was made with [modelops]({{ project_url }}) {{ version }}{% if operation %} (`modelops {{ operation }}`){% endif %}.

## Method

**{{ method_title }}**{% if summary %}: {{ summary }}{% endif %}.
{% if paper %}
Paper: [{{ paper }}]({{ paper_url }})
{% endif %}
## Inputs

| role | source | revision | commit | fingerprint (sha256) |
|---|---|---|---|---|
{% for i in inputs -%}
| {{ i.role }} | {{ i.source }} | {{ i.revision or "-" }} | {{ i.commit or "-" }} | {{ (i.fingerprint_sha256 or "-")[:16] }} |
{% endfor %}
{% if metrics_table or metrics_yaml %}
## Measured

{% if metrics_table -%}
| metric | value |
|---|---|
{% for k, v in metrics_table -%}
| {{ k }} | {{ v }} |
{% endfor %}
{% endif -%}
{% if metrics_yaml %}
```yaml
{{ metrics_yaml }}```
{% endif %}
{% if plot %}
![{{ plot_alt }}]({{ plot }})
{% endif %}
{% endif %}
## Recipe

The exact recipe that produced these weights (`{{ recipe_file }}`, also in this repository):

```yaml
{{ recipe_yaml }}```

Reproduce with `modelops {{ "merge" if is_merge else operation }} --recipe {{ recipe_file }} --out OUT_DIR`.
{% if extra_text %}

{{ extra_text }}
{% endif %}
"""


def write_model_card(
    folder: Path,
    *,
    method: MethodDescription | None = None,
    template: Path | None = None,
    extra_text: str | None = None,
    dry_run: bool = False,
) -> Path:
    """Write `folder/README.md` from `folder/modelops_recipe.yaml`, offline; return the card's path.

    `method` says what the method is and which paper it follows (the caller knows; the hub does not look it up).
    `template` is a Jinja file rendered by `ModelCard.from_template` (it gets `card_data`, `default_body` and
    every field of the default body); without front matter, the metadata block is put on top. `extra_text` is
    appended as Markdown.
    """
    folder = Path(folder)
    card = build_model_card(folder, method=method, template=template, extra_text=extra_text)
    path = folder / CARD_FILE
    if not dry_run:
        tmp = folder / f".{CARD_FILE}.modelops-tmp-{os.getpid()}"
        tmp.write_text(str(card), encoding="utf-8")
        os.replace(tmp, path)
        logger.debug("wrote model card %s", path)
    return path


def build_model_card(
    folder: Path,
    *,
    method: MethodDescription | None = None,
    template: Path | None = None,
    extra_text: str | None = None,
) -> Any:
    """The `huggingface_hub.ModelCard` for `folder` (not written)."""
    from huggingface_hub import ModelCard

    recipe_path = folder / RECIPE_FILE
    if not recipe_path.is_file():
        raise RecipeError(
            f"{recipe_path}: missing; model cards are built from the recipe modelops writes beside the weights "
            "(re-run the command that made this folder)"
        )
    recipe_text = recipe_path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{recipe_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{recipe_path}: expected a mapping at the top level")

    fields = card_fields(folder, recipe, method)
    fields["recipe_yaml"] = recipe_text if recipe_text.endswith("\n") else recipe_text + "\n"
    fields["extra_text"] = (extra_text or "").strip()
    card_data = _card_data(fields)
    body = _render(_BODY, fields)
    if template is not None:
        try:
            template_str = Path(template).read_text(encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{template}: cannot read the card template ({exc.strerror})") from None
        if not template_str.lstrip().startswith("---"):
            template_str = "---\n{{ card_data }}\n---\n\n" + template_str
    else:
        template_str = DEFAULT_TEMPLATE
    try:
        return ModelCard.from_template(card_data, template_str=template_str, default_body=body, **fields)
    except Exception as exc:  # jinja2 syntax/undefined errors, bad metadata
        raise OutputError(f"{template or 'default template'}: cannot render the model card ({exc})") from None


def card_fields(folder: Path, recipe: dict[str, Any], method: MethodDescription | None = None) -> dict[str, Any]:
    """Everything the card says, derived from the recipe, the folder's files and the method's description."""
    block = recipe.get("modelops") or {}
    operation = str(block.get("operation") or ("merge" if recipe.get("merge_method") else "unknown"))
    name = str(recipe.get("merge_method") or operation)
    inputs = [i for i in block.get("inputs") or [] if isinstance(i, dict)]
    is_adapter = (folder / "adapter_config.json").is_file()
    info = method or MethodDescription(name=name, title=name)
    relation = base_model_relation(operation, is_adapter, len(inputs))
    repo_ids = [_hub_id(i) for i in inputs if not (operation == "apply-lora" and i.get("role") == "adapter")]
    tags = ["modelops", *(["merge"] if relation == "merge" else []), name]
    if is_adapter:
        tags += ["lora", "peft"]
    metrics = block.get("metrics") or {}
    nested = {k: v for k, v in metrics.items() if isinstance(v, (dict, list))}
    scalars = [(k, _fmt(v)) for k, v in metrics.items() if k not in nested]
    return {
        "title": output_name(folder),
        "project_url": project_url(),
        "version": block.get("version") or _version(),
        "operation": operation,
        "is_merge": bool(recipe.get("merge_method")),
        "method": name,
        "method_title": info.title,
        "summary": info.summary,
        "paper": info.paper,
        "paper_url": info.paper_url,
        "inputs": inputs,
        "base_models": list(dict.fromkeys(r for r in repo_ids if r)),
        "base_model_relation": relation,
        "library_name": "peft" if is_adapter else "transformers",
        "pipeline_tag": _pipeline_tag(folder, is_adapter),
        "tags": list(dict.fromkeys(tags)),
        "metrics_table": scalars,
        "metrics_yaml": yaml.safe_dump(nested, sort_keys=False, allow_unicode=True) if nested else "",
        "recipe_file": RECIPE_FILE,
        "plot": ALPHA_CURVE_PNG if (folder / ALPHA_CURVE_PNG).is_file() else "",
        "plot_alt": "The α search: score and fluency against α, with 95% intervals",
    }


def base_model_relation(operation: str, is_adapter: bool, n_inputs: int) -> str:
    """Hub relation: an adapter for extracted LoRAs; a merge for weight merges (ExPO included, two inputs);
    a finetune when a LoRA is merged into its base (the weights are the base, fine-tuned)."""
    if is_adapter or operation == "extract-lora":
        return "adapter"
    if operation == "apply-lora":
        return "finetune"
    return "merge" if n_inputs != 1 else "finetune"


def output_name(folder: Path) -> str:
    """The output folder's name, also while it is still a hidden temp folder (`.NAME.modelops-tmp-PID-XXXX`, or
    `.NAME.modelops-partial` for resumable weight outputs)."""
    name = folder.resolve().name
    for mark in (TMP_MARK, PARTIAL_MARK):
        if mark in name:
            name = name[: name.index(mark)].removeprefix(".")
    return name


def _card_data(fields: dict[str, Any]) -> Any:
    from huggingface_hub import ModelCardData

    base = fields["base_models"]
    kwargs: dict[str, Any] = {}
    if base:
        kwargs["base_model_relation"] = fields["base_model_relation"]
    return ModelCardData(
        base_model=base or None,
        library_name=fields["library_name"],
        pipeline_tag=fields["pipeline_tag"],
        tags=fields["tags"],
        **kwargs,
    )


def _render(template: str, fields: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(trim_blocks=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    text = env.from_string(template).render(**fields)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _hub_id(record: dict[str, Any]) -> str | None:
    """The input's repo id when it came from the Hub; local folders have none (they cannot be a base_model)."""
    rid = record.get("repo_id")
    return rid.split("@")[0] if isinstance(rid, str) and _REPO_ID.match(rid.split("@")[0]) else None


def _pipeline_tag(folder: Path, is_adapter: bool) -> str | None:
    cfg_path = folder / ("adapter_config.json" if is_adapter else "config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if is_adapter:
        return "text-generation" if cfg.get("task_type") == "CAUSAL_LM" else None
    archs = cfg.get("architectures") or []
    return "text-generation" if any(str(a).endswith("ForCausalLM") for a in archs) else None


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def project_url() -> str:
    """The Homepage of pyproject.toml's [project.urls], as installed: one place to change it."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        entries = metadata("modelops").get_all("Project-URL") or []
    except PackageNotFoundError:
        return PROJECT_URL
    for entry in entries:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "homepage" and url.strip():
            return url.strip()
    return PROJECT_URL


def _version() -> str:
    from modelops.version import __version__

    return __version__
