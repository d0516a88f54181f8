"""Recent runs, and one run's record, from the ``runs`` table of a results folder or dataset.

python -m pipelines.runs --output results/ [--last 10]
python -m pipelines.runs --output bq://PROJECT.DATASET --run_id 20261201T101500Z-ab12cd
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from transforms.core.errors import ConfigError, printable_values
from transforms.io.bigquery import parse_dataset, resolve_endpoint
from transforms.io.destinations import Destination, destination
from transforms.io.runs import environment_text, guard_verdict, image_text, read_records


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "–"


def list_runs(rows: list[dict]) -> str:
    """One line per run: id, pipeline, status, start, wall time, inputs and dead letters."""
    header = f"{'run_id':28s} {'pipeline':8s} {'status':9s} {'started (UTC)':19s} {'wall':>7s} "
    header += f"{'inputs':>7s} {'results':>7s} {'failed':>6s} {'dead':>6s}"
    lines = [header]
    for r in rows:
        dead = sum(d["count"] for d in r.get("dead_letters") or [])
        wall = f"{r['wall_s']:.0f}s" if r.get("wall_s") is not None else "–"
        lines.append(
            f"{r['run_id']:28s} {r['pipeline']:8s} {r['status']:9s} {_when(r['started_at']):19s} "
            f"{wall:>7s} {_n(r.get('inputs')):>7s} {_n(r.get('inputs_with_results')):>7s} "
            f"{_n(r.get('inputs_failed')):>6s} {dead:>6d}"
        )
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "–" if value is None else str(value)


def show_run(r: dict) -> str:
    """One run's record, as a person reads it."""
    out = [
        f"run {r['run_id']}  ({r['pipeline']}, {r['status']})",
        f"  started   {_when(r['started_at'])}   finished {_when(r.get('finished_at'))}"
        + (f"   wall {r['wall_s']:.1f} s" if r.get("wall_s") is not None else ""),
    ]
    if r.get("error"):
        out.append(f"  error     {r['error']}")
    out.append(
        f"  inputs    {_n(r.get('inputs'))} in, {_n(r.get('inputs_with_results'))} with results, "
        f"{_n(r.get('inputs_failed'))} failed, {_n(r.get('inputs_skipped'))} skipped as done"
    )
    if r.get("units_per_s"):
        out.append(f"  rate      {r['units_per_s']:.1f} {r['units']}/s ({r['units_done']})")
    out.append(
        f"  code      pathbeam {r.get('package_version')}  commit {r.get('git_commit')}  "
        f"{image_text(r.get('container_image'))}"
    )
    out.append(f"  env       {environment_text(r.get('environment'))}")
    out.append(f"  where     {r.get('runner')} on {r.get('device')} ({r.get('precision')})")
    for m in r.get("models") or []:
        out.append(
            f"  model     {m['name']} {m['version']} ({m['output_kind']}, {m['format']}, "
            f"{m.get('precision')}) "
            f"{m['uri']}  sha256 {m['sha256']}"
        )
        if m.get("recipe"):
            out.append(
                f"  recipe    {m['recipe']}"
                + (f"  licence {m['licence']}" if m.get("licence") else "")
                + (f"; overridden: {m['overrides']}" if m.get("overrides") else "")
                + (f"; stain: {m['stain']}" if m.get("stain") else "")
            )
    for g in r.get("precision_guard") or []:
        figures = ", ".join(
            f"{name.replace('_', ' ')} {g[name]:.6g}"
            for name in ("label_agreement", "max_prob_diff", "min_cosine")
            if g.get(name) is not None
        )
        out.append(
            f"  guard     {g['model']}: {guard_verdict(g)} ({g['checked']} checked; {figures})"
        )
    for o in r.get("outputs") or []:
        out.append(f"  table     {o['table_name']}: {o['row_count']} rows")
    for d in r.get("dead_letters") or []:
        out.append(f"  dead      {d['count']} x {d['error_type']} at {d['stage']}: {d['example']}")
    if r.get("report_uri"):
        out.append(f"  report    {r['report_uri']}")
    flags = " ".join(f"--{f['key']}={f['value']}" for f in r.get("flags") or [])
    out.append(f"  flags     {flags}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.runs", description=__doc__)
    parser.add_argument("--output", required=True, help="the results folder or bq:// dataset")
    parser.add_argument("--last", type=int, default=20, help="how many recent runs to list")
    parser.add_argument("--run_id", help="show this run's whole record")
    parser.add_argument("--bigquery_endpoint", help="a BigQuery emulator's endpoint")
    args = parser.parse_args(argv)
    try:
        if args.output.startswith("bq://"):
            endpoint = resolve_endpoint(args.bigquery_endpoint)
            dest = Destination(bigquery=parse_dataset(args.output, "--output", endpoint))
        else:
            dest = destination(args.output, None, None, False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = read_records(dest, args.run_id, None if args.run_id else args.last)
    if not rows:
        what = f"run {args.run_id}" if args.run_id else "runs"
        print(f"no {what} recorded in {args.output}", file=sys.stderr)
        return 1
    rows = [printable_values(row) for row in rows]  # no id may drive the operator's terminal
    print(show_run(rows[0]) if args.run_id else list_runs(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
