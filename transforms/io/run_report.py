"""The HTML report of a run: ``<artifacts>/report/<run_id>/index.html``.

Static: no server and no JavaScript, one file with its style inline, opening from a local folder
or from GCS. Pictures (heatmaps, class maps, thumbnails) are referenced by paths relative to the
report, so the artifacts folder can be copied or served as it is. Every value that comes from
inputs or models (ids, URIs, messages, class names) is HTML-escaped: a ``slide_id`` of
``<script>`` is shown, never run.
"""

from __future__ import annotations

import posixpath
from typing import Any

from transforms.io.composition_graph import composition_svg
from transforms.io.html_text import e
from transforms.io.runs import environment_text, guard_verdict, image_text

MAX_ROWS = 2000
"""Rows per table in the report; a larger run says how many more there are (the tables hold
all of them)."""

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4} .num{text-align:right}
.ok{color:#176117;font-weight:600} .failed{color:#a11;font-weight:600}
img.pic{max-width:260px;max-height:260px;display:block} .muted{color:#777}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
dt{color:#555} dd{margin:0} code{font-size:12px;word-break:break-all}
"""


def relative(uri: str | None, report_dir: str) -> str | None:
    """``uri`` as a path relative to ``report_dir`` when both are in one folder tree (local, or
    one bucket), else as it is."""
    if not uri:
        return None
    scheme, _, rest = uri.rpartition("://")
    base_scheme, _, base_rest = report_dir.rpartition("://")
    if scheme != base_scheme:
        return uri
    if scheme:  # gs://bucket/path: only within one bucket
        if rest.split("/", 1)[0] != base_rest.split("/", 1)[0]:
            return uri
    return posixpath.relpath(rest or uri, base_rest or report_dir)


def _img(uri: str | None, report_dir: str, alt: str) -> str:
    path = relative(uri, report_dir)
    if not path:
        return '<span class="muted">–</span>'
    return f'<img class="pic" src="{e(path)}" alt="{e(alt)}" loading="lazy">'


def _recipe(model: dict) -> str:
    """A model's recipe, licence and citation, and the flags that overrode the recipe."""
    said = [
        f"<code>{e(model['recipe'])}</code>"
        if model.get("recipe")
        else '<span class="muted">no recipe (flags only)</span>'
    ]
    for label in ("licence", "citation"):
        if model.get(label):
            said.append(f"{label}: {e(model[label])}")
    if model.get("stain"):
        said.append(f"stain: {e(model['stain'])}")
    if model.get("overrides"):
        said.append(f'<span class="failed">overridden: {e(model["overrides"])}</span>')
    return "<br>".join(said)


def _record(row: dict) -> str:
    status = row["status"]
    css = "ok" if status == "succeeded" else "failed"
    models = "".join(
        f"<tr><td>{e(m['name'])}</td><td>{e(m['version'])}</td><td>{e(m['output_kind'])}</td>"
        f"<td>{e(m['format'])}</td><td>{e(m.get('precision'))}</td>"
        f"<td><code>{e(m['uri'])}</code></td>"
        f"<td><code>{e(m['sha256'])}</code></td><td>{_recipe(m)}</td></tr>"
        for m in row["models"]
    )
    outputs = ", ".join(f"{e(o['table_name'])}: {o['row_count']:,}" for o in row["outputs"])
    rate = f"{row['units_per_s']:.1f} {e(row['units'])}/s" if row.get("units_per_s") else "–"
    flags = " ".join(f"--{e(f['key'])}={e(f['value'])}" for f in row["flags"])
    error = f" · {e(row['error'])}" if row.get("error") else ""
    return f"""
<h1>Run {e(row["run_id"])}</h1>
<p>{e(row["pipeline"])} pipeline · <span class="{css}">{e(status)}</span>
{error}</p>
<dl>
<dt>started</dt><dd>{_when(row["started_at"])}</dd>
<dt>finished</dt><dd>{_when(row["finished_at"])} ({row["wall_s"] or 0:.1f} s)</dd>
<dt>inputs</dt><dd>{e(row["inputs"])} in · {e(row["inputs_with_results"])} with results ·
{e(row["inputs_failed"])} failed · {e(row["inputs_skipped"])} skipped as done already</dd>
{_coverage_line(row)}<dt>throughput</dt><dd>{rate} ({e(row["units_done"])} {e(row["units"])})</dd>
<dt>outputs</dt><dd>{outputs or "–"}</dd>
<dt>code</dt><dd>pathbeam {e(row["package_version"])} · commit <code>{e(row["git_commit"])}</code>
· {e(image_text(row["container_image"]))}</dd>
<dt>environment</dt><dd>{e(environment_text(row.get("environment")))}</dd>
<dt>where</dt><dd>{e(row["runner"])} · {e(row["device"])} · {e(row["precision"])}</dd>
<dt>flags</dt><dd><code>{flags}</code></dd>
</dl>
<h2>Models</h2>
<table><tr><th>name</th><th>version</th><th>output</th><th>format</th><th>precision</th><th>URI</th>
<th>sha256</th><th>recipe</th></tr>{models}</table>{_guard(row.get("precision_guard") or [])}"""


def _guard(rows: list[dict]) -> str:
    """The accuracy guard's figures per model (reduced precision only)."""
    if not rows:
        return ""

    def figure(value: float | None) -> str:
        return "–" if value is None else f"{value:.6g}"

    def speed(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}x"

    body = "".join(
        f"<tr><td>{e(g['model'])}</td><td>{e(g['precision'])}</td>"
        f"<td class=num>{e(g['checked'])}</td><td class=num>{figure(g['label_agreement'])}</td>"
        f"<td class=num>{figure(g['max_prob_diff'])}</td>"
        f"<td class=num>{figure(g['min_cosine'])}</td>"
        f"<td class=num>{speed(g.get('speedup'))}</td>"
        + f'<td class="{"ok" if g["passed"] else "failed"}">{e(guard_verdict(g))}</td></tr>'
        for g in rows
    )
    return (
        "<h2>Reduced precision: the accuracy guard</h2><p>Each worker process ran its first "
        "inputs in both precisions, compared them and timed them; auto keeps the reduced "
        "precision only where it was faster.</p><table><tr><th>model</th>"
        "<th>precision</th><th>inputs checked</th><th>label agreement</th>"
        "<th>max prob diff</th><th>min cosine</th><th>speed-up over fp32</th><th>verdict</th>"
        "</tr>" + body + "</table>"
    )


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "–"


def _fmt_list(values: Any, digits: int = 3) -> str:
    if values is None or len(values) == 0:
        return "–"
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _classes(row: dict) -> str:
    names = row.get("class_names") or []
    values = row.get("class_area_mm2") or row.get("class_fraction") or []
    if not len(values):
        return "–"
    label = "mm²" if row.get("class_area_mm2") is not None and len(row["class_area_mm2"]) else ""
    return "<br>".join(
        f"{e(names[i] if i < len(names) else f'class {i}')}: {v:.3f} {label}"
        for i, v in enumerate(values)
    )


def _top(row: dict) -> str:
    values = row.get("class_fraction") or row.get("class_area_mm2") or []
    if not len(values):
        return "–"
    best = max(range(len(values)), key=lambda i: values[i])
    names = row.get("class_names") or []
    return e(names[best] if best < len(names) else f"class {best}")


def _slides(rows: list[dict], report_dir: str) -> str:
    rows = sorted(rows, key=lambda r: (str(r["slide_id"]), str(r["model_name"])))
    body = []
    for row in rows[:MAX_ROWS]:
        thumb = _img(row.get("thumbnail_uri"), report_dir, "thumbnail")
        viewer = relative(row.get("viewer_uri"), report_dir)
        if viewer:  # the thumbnail opens the slide's zoomable viewer
            thumb = f'<a href="{e(viewer)}">{thumb}<br>open the viewer</a>'
        body.append(
            f"<tr><td>{e(row['slide_id'])}</td><td>{thumb}</td>"
            f"<td>{_img(row.get('heatmap_uri'), report_dir, 'heatmap')}</td>"
            f"<td>{e(row['model_name'])} {e(row['model_version'])}</td>"
            f"<td class=num>{row['patch_count']:,} of {row['patches_planned']:,}</td>"
            f"<td class=num>{_coverage(row)}</td>"
            f"<td class=num>{_area(row.get('tissue_area_mm2'))}</td>"
            f"<td>{_classes(row)}</td><td>{_top(row)}</td></tr>"
        )
    more = len(rows) - MAX_ROWS
    return (
        "<h2>Slides</h2><table><tr><th>slide</th><th>thumbnail</th><th>heatmap or class map"
        "</th><th>model</th><th>patches</th><th>tissue covered</th><th>tissue mm²</th>"
        "<th>class fractions or areas</th><th>top class</th></tr>"
        + "".join(body)
        + "</table>"
        + (f"<p class=muted>{more:,} more rows in slide_summaries</p>" if more > 0 else "")
    )


def _heads(rows: list[dict], report_dir: str) -> str:
    """The slide-level heads' predictions, with their attention heatmaps."""
    rows = sorted(rows, key=lambda r: (str(r["slide_id"]), str(r["head_name"])))
    body = []
    for row in rows[:MAX_ROWS]:
        names = row.get("class_names") or []
        label = names[row["label"]] if row["label"] < len(names) else f"class {row['label']}"
        body.append(
            f"<tr><td>{e(row['slide_id'])}</td><td>{e(row['head_name'])} "
            f"{e(row['head_version'])}</td><td>{e(row['encoder_name'])}</td>"
            f"<td class=num>{row['patch_count']:,}</td><td>{e(label)} "
            f"({row['probs'][row['label']]:.3f})</td><td>{_fmt_list(row['probs'])}</td>"
            f"<td>{_img(row.get('attention_uri'), report_dir, 'attention')}</td></tr>"
        )
    return (
        "<h2>Slide-level predictions</h2><table><tr><th>slide</th><th>head</th>"
        "<th>embeddings of</th><th>patches</th><th>label</th><th>probabilities</th>"
        "<th>attention</th></tr>" + "".join(body) + "</table>"
    )


def _coverage_line(row: dict) -> str:
    """The run's lowest tissue coverage, and how many slide x models are under --min_coverage."""
    lowest = row.get("coverage_min")
    if lowest is None or lowest != lowest:
        return ""
    low = row.get("low_coverage") or 0
    flagged = f' · <span class="failed">{low} slide × model under --min_coverage</span>'
    return f"<dt>tissue covered</dt><dd>lowest {lowest:.0%}{flagged if low else ''}</dd>\n"


def _coverage(row: dict) -> str:
    """The share of the slide's tissue its patches cover; flagged under --min_coverage."""
    value = row.get("coverage")
    if value is None or value != value:  # None, or NaN from a Parquet null
        return "–"
    said = f"{value:.0%}"
    return f'<span class="failed">{said} (low)</span>' if row.get("low_coverage") else said


def _area(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cases(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{e(r['group_by'])} = {e(r['group_value'])}</td><td>{e(r['model_name'])}</td>"
        f"<td class=num>{r['slide_count']}</td><td class=num>{r['patch_count']:,}</td>"
        f"<td>{_fmt_list(r.get('class_fraction'))}</td></tr>"
        for r in sorted(rows, key=lambda r: (str(r["group_value"]), str(r["model_name"])))[
            :MAX_ROWS
        ]
    )
    return (
        "<h2>Cases</h2><table><tr><th>case</th><th>model</th><th>slides</th><th>patches</th>"
        f"<th>class fractions</th></tr>{body}</table>"
    )


ADVICE = {
    "FileNotFoundError": "check the manifest's uri (and the workers' access to it)",
    "UnsupportedFormatError": "the file is not a slide this pipeline reads: see the message",
    "SlideError": "the slide cannot be used as it is: the message says why and what to give",
    "RemoteIOError": "the store did not answer in time: rerun (with --skip_existing) later",
    "ManifestError": "fix the manifest row named in the key",
    "ModelOutputError": "the model returned NaN or inf for these inputs",
    "OutOfBoundsError": "the patch lies outside the slide: check its coordinates and level",
}


def _dead_letters(dead: dict) -> str:
    if not dead:
        return "<h2>Dead letters</h2><p>None: every input was used.</p>"
    body = []
    for (stage, kind), (n, examples) in sorted(dead.items(), key=lambda kv: -kv[1][0]):
        shown = "<br>".join(f"<code>{e(k)}</code>: {e(m)}" for k, m in examples)
        body.append(
            f"<tr><td>{e(kind)}</td><td>{e(stage)}</td><td class=num>{n:,}</td>"
            f"<td>{shown}</td><td>{e(ADVICE.get(kind, 'see the message'))}</td></tr>"
        )
    return (
        "<h2>Dead letters</h2><table><tr><th>error type</th><th>stage</th><th>count</th>"
        "<th>examples</th><th>what to do</th></tr>" + "".join(body) + "</table>"
    )


def _documents(rows: list[dict], labels: list[tuple[str, int]]) -> str:
    body = "".join(
        f"<tr><td>{e(r['doc_id'])}</td><td>{e(r['model_name'])}</td>"
        f"<td class=num>{r['n_tokens']:,}</td><td>{e(r.get('summary'))}</td></tr>"
        for r in sorted(rows, key=lambda r: (str(r["doc_id"]), str(r["model_name"])))[:MAX_ROWS]
    )
    counted = "".join(
        f"<tr><td>{e(label)}</td><td class=num>{n:,}</td></tr>"
        for label, n in sorted(labels, key=lambda kv: -kv[1])
    )
    return (
        "<h2>Entities and labels</h2><table><tr><th>label</th><th>count</th></tr>"
        f"{counted}</table><h2>Documents</h2><table><tr><th>document</th><th>model</th>"
        f"<th>tokens</th><th>result</th></tr>{body}</table>"
    )


def text_document_row(row: dict) -> dict:
    """A text result row as the report lists it: id, model, tokens and a one-line result."""
    if "entities" in row:
        summary = f"{len(row['entities'])} entities"
    elif "top_label" in row:
        summary = f"label {row['top_label']}"
    else:
        summary = f"{row.get('dim')}-d embedding"
    keep = ("doc_id", "model_name", "n_tokens")
    return {**{k: row[k] for k in keep}, "summary": summary}


def text_labels(row: dict) -> list[str]:
    """The entity labels of an entities row, or the top label of a labels row (counted)."""
    if "entities" in row:
        return [entity["label"] for entity in row["entities"]]
    return [row["top_label"]] if "top_label" in row else []


def render_report(row: dict, dead: dict, sections: dict[str, list], report_dir: str) -> str:
    """The report's HTML."""
    parts = [_record(row)]
    if row.get("composition"):
        parts.append(
            "<h2>Composition</h2><p class=muted>each gate's counts are of the patches it "
            "decides; each head's, of slides</p>" + composition_svg(row["composition"])
        )
    if "slides" in sections:
        parts.append(_slides(sections["slides"], report_dir))
        parts.append(_cases(sections.get("cases", [])))
    if "heads" in sections:
        parts.append(_heads(sections["heads"], report_dir))
    if "documents" in sections:
        parts.append(_documents(sections["documents"], sections.get("labels", [])))
    parts.append(_dead_letters(dead))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Run {e(row['run_id'])}</title><style>{_STYLE}</style></head><body>"
        + "".join(parts)
        + "</body></html>\n"
    )


def write_report(report_dir: str, row: dict, dead: dict, sections: dict[str, list]) -> str:
    """Write ``<report_dir>/index.html``; return its URI."""

    from transforms.core.remote_io import open_uri

    page = render_report(row, dead, sections, report_dir)
    uri = f"{report_dir.rstrip('/')}/index.html"
    with open_uri(uri, "w", auto_mkdir=True, encoding="utf-8") as f:
        f.write(page)
    return uri
