"""BigQuery: validated names, clients (also for a local endpoint), table creation, and the
idempotent write: a FILE_LOADS load into a per-run staging table, then one transaction that
replaces the target's rows of the same keys.

Why this mechanism: Beam's FILE_LOADS is retry-safe (files of a failed bundle are never loaded),
but it appends; appending twice duplicates a rerun. Loading into a staging table with
WRITE_TRUNCATE and then running ``DELETE rows whose key is in staging; INSERT staging`` in one
BigQuery transaction makes the whole run replace earlier results of the same (slide or document,
model, model version) instead of adding to them. A retried merge does the same thing again.
No user text is ever formatted into SQL: project and dataset are validated identifiers, table
and column names are this module's own.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.core.errors import ConfigError
from transforms.core.progress import count
from transforms.core.remote_io import bound_session, io_deadline_s, io_timeout_s, retry_transient
from transforms.io.schemas import Table, bigquery_schema

log = logging.getLogger(__name__)

ENDPOINT_ENV = "BIGQUERY_EMULATOR_HOST"
"""Read when ``--bigquery_endpoint`` is not given, as Google's other clients do for emulators."""

_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{2,61}[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_TABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,1023}$")


@dataclass(frozen=True)
class BigQueryDataset:
    """``bq://PROJECT.DATASET``, and the API endpoint to reach it (None: Google's)."""

    project: str
    dataset: str
    endpoint: str | None = None

    def table_id(self, table: str) -> str:
        """``project.dataset.table``, for google-cloud-bigquery."""
        return f"{self.project}.{self.dataset}.{table}"

    def sql_name(self, table: str) -> str:
        """The back-quoted name for SQL; every part is a validated identifier."""
        if not _TABLE.fullmatch(table):
            raise ValueError(f"not a safe table name: {table!r}")
        return f"`{self.project}.{self.dataset}.{table}`"


def normalize_endpoint(endpoint: str | None) -> str | None:
    """``127.0.0.1:9050`` or ``http://127.0.0.1:9050/`` -> ``http://127.0.0.1:9050``."""
    if not endpoint:
        return None
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def resolve_endpoint(flag_value: str | None) -> str | None:
    return normalize_endpoint(flag_value or os.environ.get(ENDPOINT_ENV))


def _check_project(project: str, name: str) -> None:
    if not _PROJECT.fullmatch(project):
        raise ConfigError(f"{name}: {project!r} is not a valid Google Cloud project id")


def parse_dataset(uri: str, name: str, endpoint: str | None = None) -> BigQueryDataset:
    """``bq://PROJECT.DATASET`` -> ``BigQueryDataset``; ``ConfigError`` naming ``name``."""
    body = uri.removeprefix("bq://")
    project, sep, dataset = body.rpartition(".")
    if not sep or not project or not dataset:
        raise ConfigError(f"{name} expects bq://PROJECT.DATASET, got {uri!r}")
    _check_project(project, name)
    if not _DATASET.fullmatch(dataset):
        raise ConfigError(f"{name}: {dataset!r} is not a valid BigQuery dataset name")
    return BigQueryDataset(project, dataset, endpoint)


def parse_table(uri: str, name: str, endpoint: str | None = None) -> tuple[BigQueryDataset, str]:
    """``bq://PROJECT.DATASET.TABLE`` -> (dataset, table); ``ConfigError`` naming ``name``."""
    body = uri.removeprefix("bq://")
    dataset_part, sep, table = body.rpartition(".")
    if not sep or not _TABLE.fullmatch(table):
        raise ConfigError(f"{name} expects bq://PROJECT.DATASET.TABLE, got {uri!r}")
    return parse_dataset(dataset_part, name, endpoint), table


def client(target: BigQueryDataset) -> Any:
    """A google-cloud-bigquery client for ``target``'s project and endpoint.

    Application Default Credentials are used where there are any; a local endpoint without them
    (an emulator) is reached anonymously.
    """
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import bigquery

    scopes = bigquery.Client.SCOPE
    if target.endpoint is None:
        credentials, _ = google.auth.default(scopes=scopes)
        options = None
    else:
        try:
            credentials, _ = google.auth.default(scopes=scopes)
        except DefaultCredentialsError:
            credentials = AnonymousCredentials()
        options = {"api_endpoint": target.endpoint}
    return bigquery.Client(
        project=target.project,
        credentials=credentials,
        client_options=options,
        _http=bounded_http(credentials),
    )


def bounded_http(credentials: Any) -> Any:
    """The authorised HTTP session the client sends through (its documented ``_http``), with
    every response read within ``PATHBEAM_IO_DEADLINE_S`` and at most ``MAX_RESPONSE_BYTES``
    (``remote_io.bound_session``): google-cloud-bigquery's own timeouts bound each socket read,
    which a trickling answer never trips."""
    from google.auth.transport.requests import AuthorizedSession

    return bound_session(AuthorizedSession(credentials), lambda url: MAX_RESPONSE_BYTES)


MAX_RESPONSE_BYTES = 256 << 20
"""The most one BigQuery API response may hold (a page of rows is a few MB)."""


class EndpointClient:
    """Beam's documented ``WriteToBigQuery(test_client=...)`` hook, pointed at an endpoint.

    Beam builds its apitools BigQuery client with Google's URL hard-coded; this is the same
    generated client with the URL of ``--bigquery_endpoint`` (as Java's ``--bigQueryEndpoint``).
    Beam's wrapper also calls ``insert_rows_json`` on it for streaming inserts, which goes to a
    google-cloud-bigquery client on the same endpoint. Only the endpoint is pickled.
    """

    def __init__(self, target: BigQueryDataset) -> None:
        self._target = target
        self._clients: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"target": self._target}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._target = state["target"]
        self._clients = None

    def _build(self) -> tuple[Any, Any]:
        if self._clients is None:
            # Private API, on purpose: Beam's Python SDK has no public way to point its BigQuery
            # sink at another endpoint (Java has --bigQueryEndpoint), and ``test_client`` must be
            # its generated apitools client, whose credentials must be Beam's apitools adapter.
            # tests/io/test_bigquery.py::test_beam_s_private_bigquery_client_is_still_there
            # fails if either changes.
            from apache_beam.internal.gcp import auth
            from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
            from apache_beam.options.pipeline_options import PipelineOptions

            credentials = auth.get_service_credentials(PipelineOptions([]))
            api = BigqueryV2(
                url=f"{self._target.endpoint}/bigquery/v2/",
                credentials=credentials,
                get_credentials=False,
            )
            self._clients = (api, client(self._target))
        return self._clients

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        api, cloud = self._build()
        return getattr(api, name) if hasattr(api, name) else getattr(cloud, name)


def schema_fields(table: Table) -> list[Any]:
    from google.cloud import bigquery

    return [bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema(table)["fields"]]


def ensure_table(bq: Any, target: BigQueryDataset, table: Table) -> None:
    """Create ``table`` (and its dataset) if needed: partitioned by run date, clustered. A table
    an older version made gets the columns it lacks (BigQuery adds NULLABLE and REPEATED
    columns in place; rows written before read them as NULL or empty)."""
    from google.cloud import bigquery

    bq.create_dataset(f"{target.project}.{target.dataset}", exists_ok=True)
    wanted = schema_fields(table)
    spec = bigquery.Table(target.table_id(table.name), schema=wanted)
    spec.time_partitioning = bigquery.TimePartitioning(field="run_date")
    spec.clustering_fields = list(table.cluster)
    existing = bq.create_table(spec, exists_ok=True)
    have = {field.name for field in existing.schema}
    missing = [field for field in wanted if field.name not in have]
    if missing and existing.schema:
        existing.schema = [*existing.schema, *missing]
        bq.update_table(existing, ["schema"])
        log.info(
            "BigQuery: added %s to %s",
            ", ".join(f.name for f in missing),
            target.table_id(table.name),
        )


STAGING_PREFIX = "_staging_"
STALE_STAGING = dt.timedelta(days=7)
"""A staging table this old belongs to a run that died between its load and its merge."""


def staging_table(table: Table, run_id: str) -> str:
    return f"{STAGING_PREFIX}{table.name}_{run_id.replace('-', '_')}"


def prepare_dataset(
    target: BigQueryDataset, stale_after: dt.timedelta = STALE_STAGING
) -> list[str]:
    """At launch: create the dataset if needed (Beam's load jobs need it), and delete its
    staging tables created more than ``stale_after`` ago; return their names.

    A run's staging tables live from its load jobs to its merge, minutes to hours. One left
    behind by a run that died in between is dropped by a later run's launch.
    """
    bq = client(target)
    dataset = bq.create_dataset(f"{target.project}.{target.dataset}", exists_ok=True)
    cutoff = dt.datetime.now(dt.UTC) - stale_after
    dropped: list[str] = []
    for item in bq.list_tables(dataset):
        if not item.table_id.startswith(STAGING_PREFIX):
            continue
        created = item.created or bq.get_table(item.reference).created
        if created is not None and created <= cutoff:
            bq.delete_table(item.reference, not_found_ok=True)
            log.info(
                "BigQuery: dropped stale staging table %s (created %s)", item.table_id, created
            )
            dropped.append(item.table_id)
    return dropped


def replace_sql(target: BigQueryDataset, table: Table, staging: str) -> str:
    """One transaction: drop the target's rows whose key is in staging, then insert staging."""
    dest, source = target.sql_name(table.name), target.sql_name(staging)
    match = " AND ".join(f"s.{k} = t.{k}" for k in table.key)
    columns = ", ".join(c.name for c in table.columns)
    return (
        "BEGIN TRANSACTION;\n"
        f"DELETE FROM {dest} AS t WHERE EXISTS (SELECT 1 FROM {source} AS s WHERE {match});\n"
        f"INSERT INTO {dest} ({columns}) SELECT {columns} FROM {source};\n"
        "COMMIT TRANSACTION;"
    )


class _ReplaceFromStaging(beam.DoFn):
    """Wait for the staging loads, then replace the target's rows of the staged keys."""

    def __init__(self, target: BigQueryDataset, table: Table, staging: str) -> None:
        self._target = target
        self._table = table
        self._staging = staging

    def process(self, _: Any, jobs: list[tuple[str, Any]]) -> Iterator[str]:
        from google.api_core.exceptions import NotFound

        bq = client(self._target)
        for _destination, ref in jobs:
            bq.get_job(ref.jobId, project=ref.projectId, location=ref.location).result()
        ensure_table(bq, self._target, self._table)
        try:
            staged = bq.get_table(self._target.table_id(self._staging)).num_rows
        except NotFound:
            staged = None  # nothing was written this run (no rows, e.g. no dead letters)
        if staged is not None:
            bq.query(replace_sql(self._target, self._table, self._staging)).result()
            bq.delete_table(self._target.table_id(self._staging), not_found_ok=True)
            count(f"merged_{self._table.name}", staged or 0)
            log.info("BigQuery %s: replaced the keys of %s staged rows", self._table.name, staged)
        yield self._target.table_id(self._table.name)


class WriteToBigQueryTable(beam.PTransform):
    """Rows of ``table`` -> ``target``, replacing earlier rows with the same key columns."""

    def __init__(
        self, table: Table, target: BigQueryDataset, run_id: str, temp_location: str
    ) -> None:
        super().__init__()
        self._table = table
        self._target = target
        self._staging = staging_table(table, run_id)
        self._temp_location = temp_location

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

        written = rows | "LoadStaging" >> WriteToBigQuery(
            table=f"{self._target.project}:{self._target.dataset}.{self._staging}",
            schema=bigquery_schema(self._table),
            method=WriteToBigQuery.Method.FILE_LOADS,
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_TRUNCATE,
            custom_gcs_temp_location=self._temp_location,
            test_client=EndpointClient(self._target) if self._target.endpoint else None,
        )
        jobs = (
            written.destination_load_jobid_pairs,
            written.destination_copy_jobid_pairs,
        ) | "AllJobs" >> beam.Flatten()
        return (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "ReplaceFromStaging"
            >> beam.ParDo(
                _ReplaceFromStaging(self._target, self._table, self._staging),
                beam.pvalue.AsList(jobs),
            )
        )


def json_value(value: Any) -> Any:
    """``json.dumps``'s ``default`` for a row: dates and times in ISO form, anything else as
    text."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as BigQuery's JSON takes it."""
    import json

    return json.loads(json.dumps(row, default=json_value))


def query_keys(target: BigQueryDataset, table: Table, columns: tuple[str, ...]) -> set[tuple]:
    """Distinct ``columns`` of ``table`` in ``target``; empty if the table does not exist."""
    from google.api_core.exceptions import NotFound

    bq = client(target)
    names = ", ".join(columns)  # our own column names, never user text
    sql = f"SELECT DISTINCT {names} FROM {target.sql_name(table.name)}"

    def keys() -> set[tuple]:
        try:
            rows = bq.query(sql, timeout=io_timeout_s()).result(timeout=io_deadline_s())
        except NotFound:
            return set()
        return {tuple(row[c] for c in columns) for row in rows}

    return retry_transient(f"reading the keys of {target.sql_name(table.name)}", keys)


def read_table_rows(target: BigQueryDataset, table: str) -> Iterator[dict[str, Any]]:
    """Every row of ``target.table`` as a dict (a manifest kept in BigQuery)."""
    bq = client(target)
    # each page request bounded; a manifest of millions of rows may take longer than one deadline
    for row in bq.list_rows(target.table_id(table), timeout=io_timeout_s()):
        yield dict(row.items())
