"""Sphinx directives that render flip-nvflare's job templates from their files, so the docs stay current.

- ``flip-templates``: one row per template folder (its job type, app style and ``info.conf`` description).
- ``flip-template-keys``: every top-level key of every ``config_fed_server.json`` and
  ``config_fed_client.json``, the value each template gives it, and what it means.
- ``flip-template-meta``: every key of the templates' ``meta.conf``.
- ``flip-template-components`` *name*: a template's components, workflows, executors and filters,
  each with its class (linked to the API reference) and the ``args`` the template gives it.

The meanings of the keys are kept here (:data:`KEY_MEANINGS`, :data:`META_MEANINGS`). A key a
template has and this file does not describe, or a description of a key no template has, is a
build warning; ``make docs`` treats warnings as errors, so the page cannot fall behind the templates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from flip_nvflare.jobs.templates import STYLES, TEMPLATE_NAMES, templates_root

LOGGER = logging.getLogger(__name__)

SIDES = ("server", "client")

#: What each top-level key of the job configs means, by (side, key).
KEY_MEANINGS: dict[tuple[str, str], str] = {
    ("server", "format_version"): "NVFlare's config format (2).",
    ("client", "format_version"): "NVFlare's config format (2).",
    ("server", "flip_mode"): "`dev` or `prod`: which backend FlipBackend builds (see dev_and_prod.md). Written by "
    "`job create --mode` and by FLIP's hub (`prod`).",
    ("client", "flip_mode"): "`dev` or `prod`, as on the server; each side reads its own config.",
    ("server", "model_id"): "The model's id on the hub (a UUID), written by FLIP's hub; FlipBackend's `model_id`. "
    "Recipe exports leave it empty: it is resolved when the job starts.",
    ("server", "global_rounds"): "Federated rounds: ScatterAndGather's (or FedAvg's) `num_rounds`. `job create` "
    "fills it from the app's `GLOBAL_ROUNDS`. Unused by evaluation jobs.",
    ("server", "min_clients"): "Results a round waits for, and sites that must prepare before the run goes on "
    "(InitTraining / InitEvaluation, ScatterAndGather). Written by FLIP's hub in prod and by "
    "`job create --dev-data` in dev.",
    ("server", "participating_clients"): "The sites taking part (`null`: every connected client); used by the "
    "preparation, evaluation and clean-up workflows.",
    ("server", "ignore_result_error"): "Whether a round goes on when a client's result is an error "
    "(ScatterAndGather). From the app's `IGNORE_RESULT_ERROR` when it sets it.",
    ("server", "on_site_lost"): "`continue` or `end`: what SiteLossReporter does when a site leaves the run "
    "(deployment.md).",
    ("server", "dead_client_grace_period"): "NVFlare's own key: seconds a site reported dead stays on the watch "
    "list before it is dropped from the run.",
    ("server", "dead_client_check_lead_time"): "NVFlare's own key: seconds after a task is scheduled before "
    "NVFlare ends it because it waits only on dropped sites.",
    ("server", "server"): "NVFlare's server settings: `task_request_interval` 0.5 s (NVFlare's default is 2 s).",
    ("server", "components"): "The server's components: FlipBackend (id `flip`), the hub widgets, persistor, "
    "aggregator, model selector and locator (tables below).",
    ("server", "workflows"): "The controllers, in the order they run (tables below).",
    ("server", "task_data_filters"): "NVFlare's filters on the data of tasks the server sends (none).",
    ("server", "task_result_filters"): "NVFlare's filters on results the server receives (none).",
    ("client", "project_id"): "The encrypted project id, written by FLIP's hub and forwarded unchanged to the "
    "trust's services (CohortPreparer, the runners).",
    ("client", "query"): "The cohort SQL (against the `omop` schema), written by FLIP's hub (CohortPreparer, the "
    "runners).",
    ("client", "local_rounds"): "Client API templates: the local epochs per round, handed to the training script.",
    ("client", "components"): "The client's components: FlipBackend (id `flip`) and, for Client API scripts, "
    "NVFlare's ConvertToFedEvent (script metrics to the server).",
    ("client", "executors"): "Which executor runs each task (tables below).",
    ("client", "task_data_filters"): "NVFlare's filters on task data arriving at the site (none).",
    ("client", "task_result_filters"): "What a result passes before it leaves the trust: PercentilePrivacy on "
    "`train` results in training templates (a trust's site policy adds its own, site_policy.md).",
}

#: What each key of a template's ``meta.conf`` means.
META_MEANINGS: dict[str, str] = {
    "name": "The job's name (the template's folder name until a tool renames it).",
    "resource_spec": "NVFlare's per-site resource request (GPUs): `job create --gpus`, or the app's "
    "`RESOURCE_SPEC` (templates.md, GPUs).",
    "deploy_map": "Which app goes to which site: one app for `@ALL`.",
    "min_clients": "Sites that must be available for the job to be scheduled and to keep running "
    "(NVFlare checks it when a site is dropped).",
    "mandatory_clients": "Sites without which the job is not scheduled (none).",
}


def template_folders() -> list[Path]:
    """Every template folder of the package, executor style first, in job-type order."""
    root = templates_root()
    names = [
        f"{name}_client_api" if style == "client_api" else name for style in STYLES for name in TEMPLATE_NAMES.values()
    ]
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    # Folders the job-type table does not know are listed too, after the known ones.
    return [root / name for name in names if (root / name).is_dir()] + [
        root / name for name in found if name not in names
    ]


def read_config(folder: Path, side: str) -> dict[str, Any]:
    """The parsed ``config_fed_<side>.json`` of a template folder."""
    with open(folder / f"config_fed_{side}.json", encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def read_conf(path: Path) -> dict[str, Any]:
    """A HOCON ``.conf`` file (``info.conf``, ``meta.conf``) as a plain dict."""
    from pyhocon import ConfigFactory, HOCONConverter

    parsed: dict[str, Any] = json.loads(HOCONConverter.to_json(ConfigFactory.parse_file(str(path))))
    return parsed


def compact(value: object) -> str:
    """``value`` as one line of JSON."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _paragraph(*children: nodes.Node) -> nodes.paragraph:
    para = nodes.paragraph()
    para.extend(children)
    return para


def _cell(content: nodes.Node | str | Sequence[nodes.Node]) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(content, str):
        entry += _paragraph(nodes.Text(content))
    elif isinstance(content, nodes.Node):
        entry += _paragraph(content)
    else:
        entry += _paragraph(*content)
    return entry


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], widths: Sequence[int]) -> nodes.table:
    """A docutils table; each cell is a string, a node or a list of nodes."""
    result = nodes.table(classes=["flip-config-table"])
    group = nodes.tgroup(cols=len(headers))
    result += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head_row = nodes.row()
    head += head_row
    for text in headers:
        head_row += _cell(text)
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for content in cells:
            row += _cell(content)
        body += row
    return result


def code(text: str) -> nodes.literal:
    """Inline code."""
    return nodes.literal(text, text)


def class_ref(path: str) -> nodes.Node:
    """A component's ``path``: a link to its API entry when it is one of flip-nvflare's, else code."""
    if not path.startswith("flip_nvflare."):
        return code(path)
    ref = addnodes.pending_xref(
        "", refdomain="py", reftype="obj", reftarget=path, refexplicit=False, refwarn=False, py_module=None
    )
    ref += code(path)
    return ref


def markdown_text(text: str) -> list[nodes.Node]:
    """``text`` with its backtick spans as inline code (the meanings above use them)."""
    parts = text.split("`")
    return [code(part) if i % 2 else nodes.Text(part) for i, part in enumerate(parts) if part]


class TemplatesDirective(SphinxDirective):
    """``flip-templates``: the template folders, their job type, style and description."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build the table."""
        by_name = {name: job_type.value for job_type, name in TEMPLATE_NAMES.items()}
        rows = []
        for folder in template_folders():
            self.env.note_dependency(str(folder / "info.conf"))
            info = read_conf(folder / "info.conf")
            style = "client_api" if folder.name.endswith("_client_api") else "executor"
            job_type = by_name.get(folder.name.removesuffix("_client_api"), "")
            rows.append(
                [code(folder.name), code(job_type), code(style), markdown_text(str(info.get("description", "")))]
            )
        return [table(["Template", "Job type (--type)", "App style", "What it does"], rows, [22, 10, 10, 58])]


class TemplateKeysDirective(SphinxDirective):
    """``flip-template-keys``: every top-level key of the job configs, its values and meaning."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build the table; warn about keys without a meaning and meanings without a key."""
        folders = template_folders()
        values: dict[tuple[str, str], dict[str, Any]] = {}
        for folder in folders:
            for side in SIDES:
                self.env.note_dependency(str(folder / f"config_fed_{side}.json"))
                for key, value in read_config(folder, side).items():
                    values.setdefault((side, key), {})[folder.name] = value
        for side, key in values:
            if (side, key) not in KEY_MEANINGS:
                LOGGER.warning(
                    "job templates: the %s config's top-level key %r has no description: add it to "
                    "KEY_MEANINGS in docs/_ext/flip_docs.py",
                    side,
                    key,
                    location=self.get_location(),
                )
        for side, key in KEY_MEANINGS:
            if (side, key) not in values:
                LOGGER.warning(
                    "job templates: no %s config has the key %r any more: remove it from KEY_MEANINGS in "
                    "docs/_ext/flip_docs.py",
                    side,
                    key,
                    location=self.get_location(),
                )
        rows = []
        order = {key: index for index, key in enumerate(KEY_MEANINGS)}
        for side, key in sorted(values, key=lambda k: (SIDES.index(k[0]), order.get(k, len(order)))):
            rows.append(
                [
                    code(key),
                    side,
                    self._values(values[(side, key)], [f.name for f in folders]),
                    markdown_text(KEY_MEANINGS.get((side, key), "")),
                ]
            )
        return [table(["Key", "Config", "In the templates", "Meaning"], rows, [18, 8, 30, 44])]

    @staticmethod
    def _values(by_template: dict[str, Any], names: list[str]) -> list[nodes.Node]:
        shown: list[nodes.Node] = []
        missing = [name for name in names if name not in by_template]
        distinct: dict[str, list[str]] = {}
        for name, value in by_template.items():
            text = f"[{len(value)} entries]" if isinstance(value, list) and value else compact(value)
            distinct.setdefault(text, []).append(name)
        if len(distinct) == 1 and not missing:
            return [code(next(iter(distinct)))]
        for text, where in distinct.items():
            if shown:
                shown.append(nodes.Text("; "))
            shown += [code(text), nodes.Text(f" ({', '.join(where)})")]
        if missing:
            shown.append(nodes.Text(f"; absent from {', '.join(missing)}"))
        return shown


class TemplateMetaDirective(SphinxDirective):
    """``flip-template-meta``: every key of the templates' ``meta.conf``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build the table; warn about undescribed or stale keys."""
        values: dict[str, dict[str, str]] = {}
        for folder in template_folders():
            self.env.note_dependency(str(folder / "meta.conf"))
            for key, value in read_conf(folder / "meta.conf").items():
                values.setdefault(key, {})[folder.name] = compact(value)
        for key in sorted(set(values) ^ set(META_MEANINGS)):
            problem = "has no description" if key in values else "is in no meta.conf any more"
            LOGGER.warning(
                "job templates: meta.conf key %r %s: update META_MEANINGS in docs/_ext/flip_docs.py",
                key,
                problem,
                location=self.get_location(),
            )
        rows = []
        for key in META_MEANINGS:
            if key not in values:
                continue
            distinct = sorted(set(values[key].values()))
            shown = code(distinct[0]) if len(distinct) == 1 else code(" / ".join(distinct))
            if key == "name":
                shown = nodes.Text("the template's folder name")
            rows.append([code(key), shown, markdown_text(META_MEANINGS[key])])
        return [table(["Key", "In the templates", "Meaning"], rows, [18, 30, 52])]


class TemplateComponentsDirective(SphinxDirective):
    """``flip-template-components NAME``: what a template runs, with the args it gives each class."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build one table per section of the template's two configs."""
        folder = templates_root() / self.arguments[0]
        if not folder.is_dir():
            LOGGER.warning("no job template %r in %s", self.arguments[0], folder, location=self.get_location())
            return []
        result: list[nodes.Node] = []
        for side in SIDES:
            self.env.note_dependency(str(folder / f"config_fed_{side}.json"))
            config = read_config(folder, side)
            rows: list[list[Any]] = []
            for item in config.get("components", []):
                rows.append(["component", code(item.get("id", "")), class_ref(item["path"]), self._args(item)])
            for item in config.get("workflows", []):
                rows.append(["workflow", code(item.get("id", "")), class_ref(item["path"]), self._args(item)])
            for item in config.get("executors", []):
                executor = item["executor"]
                tasks = ", ".join(item.get("tasks", []))
                rows.append(["executor", code(tasks), class_ref(executor["path"]), self._args(executor)])
            for kind in ("task_data_filters", "task_result_filters"):
                for item in config.get(kind, []):
                    tasks = ", ".join(item.get("tasks", []))
                    for flt in item.get("filters", []):
                        rows.append([kind.removesuffix("s"), code(tasks), class_ref(flt["path"]), self._args(flt)])
            caption = nodes.paragraph()
            caption += nodes.strong(text=f"config_fed_{side}.json")
            result += [caption, table(["Kind", "Id / tasks", "Class", "args"], rows, [12, 18, 30, 40])]
        return result

    @staticmethod
    def _args(item: dict[str, Any]) -> nodes.Node:
        args = item.get("args")
        return code(compact(args)) if args else nodes.Text("(defaults)")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("flip-templates", TemplatesDirective)
    app.add_directive("flip-template-keys", TemplateKeysDirective)
    app.add_directive("flip-template-meta", TemplateMetaDirective)
    app.add_directive("flip-template-components", TemplateComponentsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
