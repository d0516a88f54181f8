"""A stream's BigQuery writes: each window's rows of a table merged into it by key, once.

Per window and table, one worker takes the window's rows (a ``GroupByKey`` on one key) and:

1. writes them as newline-delimited JSON to ``<temp_location>/pathbeam_stream/<run>/``;
2. loads that file into a staging table of its own (``_staging_<table>_<run>_<random>``);
3. runs ``bigquery.replace_sql``: in one transaction, the table's rows with a staged key
   (``Table.key``: slide, model, model version; a dead letter's stage and input) are deleted and
   the staged rows inserted;
4. drops the staging table and the file, and emits ``(slide, table)`` for each slide written.

A worker killed between 2 and 4 leaves a staging table; each worker's first merge drops those
older than a week (``bigquery.prepare_dataset``, as a batch job's start does).

Exactly once by key: a slide processed again (a redelivered notification, a restarted stream, a
retried bundle) replaces its rows instead of adding to them, since a retried merge deletes what
the first one inserted. The Storage Write API's exactly-once mode would be the other way; from
Python it is a cross-language transform that needs a Java expansion service. One load and one
DML transaction per table per window keeps within BigQuery's quotas at a window of a minute or
more (a table takes 2 concurrent mutating statements and queues 20).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.core import progress
from transforms.io.bigquery import BigQueryDataset
from transforms.io.schemas import Table

log = logging.getLogger(__name__)

STREAM_TEMP = "pathbeam_stream"
"""The folder under ``--temp_location`` for a stream's load files and its inbox."""


def stream_temp(temp_location: str, *parts: str) -> str:
    return "/".join([temp_location.rstrip("/"), STREAM_TEMP, *parts])


class MergeWindow(beam.DoFn):
    """``(anything, rows of one table in one window)`` -> the rows merged into ``table``;
    out: ``(slide_id, table name)`` for each slide among them (``key_of`` reads it)."""

    def __init__(
        self,
        target: BigQueryDataset,
        table: Table,
        run_id: str,
        temp_location: str,
        key_of: Any,
    ) -> None:
        self._target = target
        self._table = table
        self._run_id = run_id
        self._temp = temp_location
        self._key_of = key_of
        self._ready = False

    def setup(self) -> None:
        self._ready = False

    def process(self, element: tuple[Any, Iterable[dict]]) -> Iterator[tuple[str, str]]:
        from google.cloud import bigquery

        from transforms.core.remote_io import filesystem, open_uri
        from transforms.io.bigquery import (
            STAGING_PREFIX,
            client,
            ensure_table,
            json_value,
            prepare_dataset,
            replace_sql,
            schema_fields,
        )

        rows = list(element[1])
        if not rows:
            return
        bq = client(self._target)
        if not self._ready:  # once per worker: the table exists with every column, and staging
            prepare_dataset(self._target)  # tables a killed worker left a week ago are dropped
            ensure_table(bq, self._target, self._table)
            self._ready = True
        attempt = uuid.uuid4().hex[:12]
        staging = f"{STAGING_PREFIX}{self._table.name}_{self._run_id.replace('-', '_')}_{attempt}"
        uri = stream_temp(self._temp, self._run_id, f"{self._table.name}-{attempt}.json")
        columns = [c.name for c in self._table.columns]
        with open_uri(uri, "w", auto_mkdir=True) as f:
            for row in rows:
                f.write(json.dumps({c: row.get(c) for c in columns}, default=json_value) + "\n")
        fs, path = filesystem(uri)
        try:
            config = bigquery.LoadJobConfig(
                schema=schema_fields(self._table),
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            )
            bq.load_table_from_uri(uri, self._target.table_id(staging), job_config=config).result()
            bq.query(replace_sql(self._target, self._table, staging)).result()
        finally:
            bq.delete_table(self._target.table_id(staging), not_found_ok=True)
            fs.rm(path)
        progress.count(f"merged_{self._table.name}", len(rows))
        keys = sorted({self._key_of(row) for row in rows})
        log.info("BigQuery %s: merged %d rows of %d slides", self._table.name, len(rows), len(keys))
        for key in keys:
            yield key, self._table.name
