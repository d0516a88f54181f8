"""The durable record of every run: one ``runs`` row, written where the results go.

``RunInfo`` is what the launcher knows (the flags, the code, the models); the job's last step
(``record_run.RecordRun``) adds what happened (counts, dead letters, throughput, weights' sha256)
and writes the row with status ``succeeded``. The launcher writes ``submitted`` for a job it only
submits, and ``failed`` (with the error) for a local run that failed, keeping the counts the job
recorded if it got that far. A row is keyed by ``run_id``: a folder holds
``runs/<run_id>.parquet`` (rewritten), BigQuery replaces the row in one transaction, so a rerun
with the same ``--run_id`` never leaves two.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from transforms.core.environment import environment
from transforms.core.errors import MAX_MESSAGE_CHARS, ConfigError, redact, shorten
from transforms.core.remote_io import io_deadline_s, io_timeout_s
from transforms.io.schemas import RUNS, arrow_schema, safe_name

log = logging.getLogger(__name__)

SECRET_FLAGS = ("token", "password", "secret", "credential", "api_key", "apikey")
"""A flag whose name holds one of these has its value replaced in the record."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    uri: str
    format: str
    output_kind: str
    precision: str
    """As asked (``auto`` included)."""
    recipe: str | None = None
    """Where the model's recipe was read."""
    overrides: str | None = None
    """The recipe's fields that flags overrode, said."""
    licence: str | None = None
    citation: str | None = None
    stain: str | None = None
    """Its stain normalisation and reference, said (``StainReference.said``)."""


@dataclass(frozen=True)
class RunInfo:
    """What the launcher knows of a run before it starts."""

    run_id: str
    pipeline: str
    started_at: dt.datetime
    flags: tuple[tuple[str, str], ...]
    runner: str
    container_image: str | None = None
    package_version: str | None = None
    git_commit: str | None = None
    models: tuple[ModelInfo, ...] = ()
    units: str = "patches"
    extra: dict[str, Any] = field(default_factory=dict)
    composition: tuple[dict[str, str], ...] = ()
    """How the models compose: ``{source, target, kind, rule}`` per gate and slide head."""

    @property
    def precision(self) -> str:
        """Each model's precision as asked: ``name=auto, other=fp32``."""
        return ", ".join(f"{m.name}={m.precision}" for m in self.models) or "fp32"


def flag_pairs(argv: list[str]) -> tuple[tuple[str, str], ...]:
    """``--a=1 --b 2 --c`` -> ``(("a", "1"), ("b", "2"), ("c", "true"))``, secrets redacted."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep:
            if i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
            else:
                value = "true"
        if any(secret in name.lower() for secret in SECRET_FLAGS):
            value = "REDACTED"
        pairs.append((name, redact(value)))
    return tuple(pairs)


def code_version() -> tuple[str | None, str | None]:
    """(package version, git commit): the installed ``pathbeam``'s, and this checkout's HEAD
    (or ``PATHBEAM_GIT_COMMIT``, which an image build can set)."""
    import importlib.metadata

    try:
        version: str | None = importlib.metadata.version("pathbeam")
    except importlib.metadata.PackageNotFoundError:
        version = None
    commit = os.environ.get("PATHBEAM_GIT_COMMIT")
    if not commit:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            commit = subprocess.run(
                ["git", "-C", root, "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = None
    return version, commit or None


def weights_sha256(uri: str) -> str:
    """sha256 of a weights file, as ``sha256sum`` prints it; for a folder (a Hugging Face
    model), the sha256 of its files' ``<sha256>  <relative path>`` lines, sorted by path."""

    from transforms.core.remote_io import filesystem

    fs, path = filesystem(uri)

    def of_file(name: str) -> str:
        digest = hashlib.sha256()
        with fs.open(name, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    if not fs.isdir(path):
        return of_file(path)
    root = path.rstrip("/")
    lines = [
        f"{of_file(name)}  {name[len(root) + 1 :]}\n"
        for name in sorted(fs.find(root))
        if not name.rsplit("/", 1)[-1].startswith(".")
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def record(
    info: RunInfo,
    status: str,
    *,
    finished_at: dt.datetime | None = None,
    error: str | None = None,
    counts: dict[str, Any] | None = None,
    device: str | None = None,
    sha256: dict[str, str] | None = None,
    report_uri: str | None = None,
) -> dict[str, Any]:
    """One ``runs`` row. ``counts``: ``inputs``, ``inputs_with_results``, ``inputs_skipped``,
    ``inputs_failed``, ``outputs`` ({table: rows}), ``dead_letters`` ([(stage, type, n,
    example)]), ``units_done``, ``precision_guard`` ([``core.guard.GuardResult``], one a model)."""
    counts = counts or {}
    guard = counts.get("precision_guard", [])
    wall = (finished_at - info.started_at).total_seconds() if finished_at else None
    units_done = counts.get("units_done")
    return {
        "run_id": info.run_id,
        "pipeline": info.pipeline,
        "status": status,
        "error": shorten(redact(error), MAX_MESSAGE_CHARS) if error else None,
        "started_at": info.started_at,
        "finished_at": finished_at,
        "wall_s": wall,
        "flags": [{"key": k, "value": v} for k, v in info.flags],
        "package_version": info.package_version,
        "git_commit": info.git_commit,
        "container_image": info.container_image,
        "environment": [{"key": k, "value": v} for k, v in environment().items()],
        "runner": info.runner,
        "device": device,
        "precision": info.precision,
        "precision_guard": [
            {
                "model": g.model,
                "precision": g.precision,
                "checked": g.n,
                "label_agreement": g.agreement,
                "max_prob_diff": g.max_prob_diff,
                "min_cosine": g.min_cosine,
                "passed": g.passed,
                "speedup": g.speedup,
                "kept": g.kept,
            }
            for g in guard
        ],
        "models": [
            {
                "name": m.name,
                "version": m.version,
                "uri": redact(m.uri),
                "sha256": (sha256 or {}).get(m.name),
                "format": m.format,
                "output_kind": m.output_kind,
                "precision": ran_in(m, guard),
                "recipe": redact(m.recipe) if m.recipe else None,
                "overrides": m.overrides,
                "licence": m.licence,
                "citation": m.citation,
                "stain": m.stain,
            }
            for m in info.models
        ],
        "inputs": counts.get("inputs"),
        "inputs_with_results": counts.get("inputs_with_results"),
        "inputs_skipped": counts.get("inputs_skipped"),
        "inputs_failed": counts.get("inputs_failed"),
        "outputs": [
            {"table_name": t, "row_count": n} for t, n in sorted(counts.get("outputs", {}).items())
        ],
        "dead_letters": [
            {"stage": s, "error_type": t, "count": n, "example": redact(e)}
            for s, t, n, e in counts.get("dead_letters", [])
        ],
        "units": info.units,
        "units_done": units_done,
        "coverage_min": counts.get("coverage_min"),
        "low_coverage": counts.get("low_coverage"),
        "units_per_s": units_done / wall if units_done is not None and wall else None,
        "report_uri": report_uri,
        "composition": composition_edges(info.composition, counts.get("stage_counts") or {}),
        "run_date": info.started_at.date(),
    }


def composition_edges(edges: tuple[dict[str, str], ...], stages: dict[str, tuple]) -> list[dict]:
    """Each edge of the composition with its counts. ``stages``: per model, (patches planned,
    patches with results, patches held back by a gate, slides with results); per slide head,
    (0, slides predicted, 0, 0).

    A gate edge counts the target's patches: planned, passed (planned - held back), held back,
    and with results. A head edge counts slides: with the encoder's embeddings, and predicted.
    """
    out = []
    for edge in edges:
        source = stages.get(edge["source"], (0, 0, 0, 0))
        target = stages.get(edge["target"], (0, 0, 0, 0))
        if edge["kind"] == "gate":
            inputs, held = int(target[0]), int(target[2])
            counts = {"inputs": inputs, "passed": inputs - held, "held_back": held}
            counts["results"] = int(target[1])
        else:
            counts = {"inputs": int(source[3]), "passed": int(source[3]), "held_back": 0}
            counts["results"] = int(target[1])
        out.append({**edge, **counts})
    return out


def ran_in(model: ModelInfo, guard: list) -> str:
    """The precision ``model`` ran in, by its accuracy guard's figures (``guard``:
    ``core.guard.GuardResult`` per model): the reduced one where the guard kept it, else fp32.
    A model the guard never checked ran as asked (ONNX graphs: as exported, fp32); ``auto``
    stays ``auto`` where no input ran (a launcher's ``submitted`` or ``failed`` row)."""
    checked = [g for g in guard if g.model == model.name]
    if checked:
        return checked[0].precision if checked[0].passed and checked[0].kept else "fp32"
    return "fp32" if model.format == "onnx" else model.precision


def guard_verdict(guard: dict) -> str:
    """What one ``precision_guard`` entry of a runs row did to its model, with the measured
    speed-up of the reduced precision over fp32."""
    speedup = guard.get("speedup")
    speed = f" ({speedup:.2f}x fp32's speed)" if speedup is not None else ""
    if not guard["passed"]:
        return f"fell back to fp32{speed}"
    if guard.get("kept") is False:
        return f"auto kept fp32: {guard['precision']} was not faster{speed}"
    return f"kept {guard['precision']}{speed}"


def image_text(image: str | None) -> str:
    """The worker image of a run, as the report and the runs CLI say it."""
    return f"image {image}" if image else "no worker image given (Beam's default, or local)"


def environment_text(pairs: list[dict] | None) -> str:
    """A run's environment, as the report and the runs CLI say it: the lock and its sha256, the
    digest, the key versions, and any drift from the lock."""
    if not pairs:
        return "not recorded (a run made before environments were recorded)"
    env = {p["key"]: p["value"] for p in pairs}
    sha = env.get("lock_sha256") or ""
    said = [f"lock {env.get('lock')}" + (f" (sha256 {sha[:12]})" if sha else "")]
    said.append(f"digest {(env.get('digest') or '')[:12]}")
    said += [
        f"{k} {v}" for k, v in env.items() if k not in ("lock", "lock_sha256", "digest", "drift")
    ]
    if env.get("drift"):
        said.append(f"drift from the lock: {env['drift']}")
    return " · ".join(said)


def _folder_file(folder: str, run_id: str) -> str:
    return f"{folder.rstrip('/')}/{RUNS.name}/{safe_name(run_id)}.parquet"


def write_record(dest: Any, row: dict[str, Any]) -> None:
    """Write (or replace) the run's row at ``dest`` (a ``Destination``)."""
    if dest.bigquery is not None:
        _write_bigquery(dest.bigquery, row)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.core.remote_io import open_uri

    uri = _folder_file(dest.folder, row["run_id"])
    table = pa.Table.from_pylist([row], schema=arrow_schema(RUNS))
    with open_uri(uri, "wb", auto_mkdir=True) as f:
        pq.write_table(table, f)


def _write_bigquery(target: Any, row: dict[str, Any]) -> None:
    from google.cloud import bigquery

    from transforms.io.bigquery import (
        client,
        ensure_table,
        json_row,
        replace_sql,
        schema_fields,
        staging_table,
    )

    bq = client(target)
    ensure_table(bq, target, RUNS)
    staging = staging_table(RUNS, row["run_id"])
    # A one-row staging table (streamed in) and the same keyed replace as every other table:
    # the runs row is never streamed into the target itself, so a later replace can delete it.
    bq.delete_table(target.table_id(staging), not_found_ok=True)
    bq.create_table(bigquery.Table(target.table_id(staging), schema=schema_fields(RUNS)))
    errors = bq.insert_rows_json(target.table_id(staging), [json_row(row)])
    if errors:
        raise RuntimeError(f"the runs row was refused: {errors}")
    bq.query(replace_sql(target, RUNS, staging)).result()
    bq.delete_table(target.table_id(staging), not_found_ok=True)


def read_records(dest: Any, run_id: str | None = None, last: int | None = None) -> list[dict]:
    """Run rows at ``dest``, newest first: one run's, or the ``last`` N."""
    if dest.bigquery is not None:
        return _read_bigquery(dest.bigquery, run_id, last)

    from transforms.core.remote_io import filesystem, read_parquet

    root = f"{dest.folder.rstrip('/')}/{RUNS.name}"
    fs, path = filesystem(root)
    if run_id:
        names = [f"{path}/{safe_name(run_id)}.parquet"]
    else:
        names = fs.glob(f"{path}/*.parquet") if fs.exists(path) else []
    rows = []
    for name in names:
        try:
            with fs.open(name, "rb") as f:
                rows.extend(read_parquet(f).to_pylist())
        except FileNotFoundError:
            continue
    rows.sort(key=lambda r: r["started_at"], reverse=True)
    return rows[:last] if last else rows


def _read_bigquery(target: Any, run_id: str | None, last: int | None) -> list[dict]:
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    from transforms.io.bigquery import client

    bq = client(target)
    sql = f"SELECT * FROM {target.sql_name(RUNS.name)}"
    params = []
    if run_id:
        sql += " WHERE run_id = @run_id"
        params.append(bigquery.ScalarQueryParameter("run_id", "STRING", run_id))
    sql += " ORDER BY started_at DESC"
    if last:
        sql += f" LIMIT {int(last)}"
    try:
        config = bigquery.QueryJobConfig(query_parameters=params)
        result = bq.query(sql, job_config=config, timeout=io_timeout_s())
        return [dict(row.items()) for row in result.result(timeout=io_deadline_s())]
    except NotFound:
        return []


def mark_failed(dest: Any, info: RunInfo, error: str) -> None:
    """Record a run that failed: its recorded row (if the job wrote one) with status
    ``failed`` and the error; else a row of what the launcher knows. Never raises: a run's
    own failure is what the caller reports."""
    try:
        rows = read_records(dest, info.run_id)
        now = dt.datetime.now(dt.UTC)
        if rows:
            error = shorten(redact(error), MAX_MESSAGE_CHARS)
            row = {**rows[0], "status": "failed", "error": error, "finished_at": now}
            row["wall_s"] = (now - info.started_at).total_seconds()
        else:
            row = record(info, "failed", finished_at=now, error=error)
        write_record(dest, row)
    except Exception:  # noqa: BLE001
        log.warning("the failed run could not be recorded", exc_info=True)


CLAIMS = "_claims"
"""Where run ids are claimed: a ``_`` folder, which Parquet readers skip."""


def _claim_uri(dest: Any, run_id: str) -> str:
    if dest.bigquery is not None:  # a BigQuery run always has a gs:// temp_location
        where = f"{dest.temp_location}/{CLAIMS}/{dest.bigquery.project}.{dest.bigquery.dataset}"
    else:
        where = f"{dest.folder.rstrip('/')}/{CLAIMS}"
    return f"{where}/{safe_name(run_id)}"


def claim_run_id(dest: Any, run_id: str) -> None:
    """Claim ``run_id`` in ``dest`` before anything is written, or raise ``ConfigError``: an id
    already recorded there, or claimed by a run in progress (two concurrent runs with one
    ``--run_id`` kept only one run's rows). The claim is one object created only if it does not
    exist (``O_EXCL`` locally, ``ifGenerationMatch=0`` on GCS), so of two concurrent launches
    exactly one wins."""
    import datetime as dt

    from transforms.core.remote_io import filesystem

    uri = _claim_uri(dest, run_id)
    done = [r["status"] for r in read_records(dest, run_id) if r["status"] != "failed"]
    if done:
        raise ConfigError(
            f"--run_id {run_id} is already recorded in {dest.describe()} ({done[0]}): "
            "pick another id (a failed run's id may be reused)"
        )
    fs, path = filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat().encode()
    try:
        if "file" in fs.protocol:
            # fsspec's local pipe_file(mode="create") checks, then writes: two launches in the
            # same instant both passed (seen in the suite). O_EXCL makes the check the write.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(stamp)
        else:  # gcsfs: ifGenerationMatch=0, atomic in the store
            fs.pipe_file(path, stamp, mode="create")
    except FileExistsError:
        raise ConfigError(
            f"--run_id {run_id} is in use in {dest.describe()}: another run with that id is in "
            f"progress, or one failed and left {uri} (delete it to reuse the id)"
        ) from None


def release_run_id(dest: Any, run_id: str) -> None:
    """Give back the claim of a run that failed before its record was written."""

    from transforms.core.remote_io import filesystem

    uri = _claim_uri(dest, run_id)
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
