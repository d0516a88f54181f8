"""Tests against the local GCS and BigQuery emulators (``localgcp``)."""

from __future__ import annotations


def route_gcs_through(proxy, monkeypatch) -> None:  # noqa: ANN001
    """Send this process's GCS requests through a ``FaultProxy`` for the rest of the test."""
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    gcsfs.GCSFileSystem.clear_instance_cache()


def bq_table(local_gcp, dataset: str, table: str):  # noqa: ANN001, ANN201 - a DataFrame
    """Every row of ``dataset.table`` in the BigQuery emulator, as a DataFrame."""
    import pandas as pd

    query = f"SELECT * FROM `{local_gcp.project}.{dataset}.{table}`"
    return pd.DataFrame([dict(row) for row in local_gcp.bigquery().query(query).result()])
