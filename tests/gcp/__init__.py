"""Tests against the local GCS and BigQuery emulators (``localgcp``)."""

from __future__ import annotations


def route_gcs_through(proxy, monkeypatch) -> None:  # noqa: ANN001
    """Send this process's GCS requests through a ``FaultProxy`` for the rest of the test."""
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    gcsfs.GCSFileSystem.clear_instance_cache()
