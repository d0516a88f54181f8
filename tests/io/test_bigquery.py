"""BigQuery names are validated before any SQL is built; bad output flags fail before launch."""

from __future__ import annotations

import pickle

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import slide_job_config, text_job_config
from tests.tables import ALL_TABLES, PATCH_PREDICTIONS
from transforms.core.errors import ConfigError
from transforms.io.bigquery import (
    BigQueryDataset,
    EndpointClient,
    normalize_endpoint,
    parse_dataset,
    parse_table,
    replace_sql,
    staging_table,
)


@pytest.mark.parametrize(
    "uri",
    [
        "bq://my-project.results",
        "bq://example.com:my-project.results_2026",
        "bq://local-project._private",
    ],
)
def test_good_datasets_parse(uri):
    target = parse_dataset(uri, "--output")
    assert uri.endswith(f"{target.project}.{target.dataset}")


@pytest.mark.parametrize(
    "uri",
    [
        "bq://results",  # no project
        "bq://My_Project.results",  # upper case and underscore in a project id
        "bq://my-project.results; DROP TABLE x",
        "bq://my-project.res`ults",
        "bq://my-project.",
        "bq://../../etc.passwd",
    ],
)
def test_bad_datasets_are_config_errors_naming_the_flag(uri):
    with pytest.raises(ConfigError, match="--output"):
        parse_dataset(uri, "--output")


def test_tables_parse_and_reject_injection():
    target, table = parse_table("bq://my-project.manifests.slides", "--slides")
    assert (target.project, target.dataset, table) == ("my-project", "manifests", "slides")
    with pytest.raises(ConfigError, match="--slides"):
        parse_table("bq://my-project.manifests.slides` WHERE 1=1 --", "--slides")


def test_replace_sql_uses_only_validated_names_and_schema_columns():
    target = BigQueryDataset("my-project", "results")
    sql = replace_sql(target, PATCH_PREDICTIONS, staging_table(PATCH_PREDICTIONS, "r-1"))
    assert "`my-project.results.patch_predictions`" in sql
    assert "`my-project.results._staging_patch_predictions_r_1`" in sql
    assert sql.startswith("BEGIN TRANSACTION;") and sql.endswith("COMMIT TRANSACTION;")
    assert "s.slide_id = t.slide_id AND s.model_name = t.model_name" in sql
    with pytest.raises(ValueError):
        target.sql_name("x`; DROP TABLE y; --")


def test_every_table_has_a_key_and_clusters_on_its_own_columns():
    for table in ALL_TABLES:
        names = [c.name for c in table.columns]
        assert table.key and set(table.key) <= set(names)
        assert 1 <= len(table.cluster) <= 4 and set(table.cluster) <= set(names)
        assert "run_date" in names and "run_id" in names


def test_endpoint_client_pickles_only_its_target():
    client = EndpointClient(BigQueryDataset("p-123", "d", "http://127.0.0.1:9"))
    copy = pickle.loads(pickle.dumps(client))
    assert copy._target == client._target and copy._clients is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("127.0.0.1:9050", "http://127.0.0.1:9050"),
        ("http://127.0.0.1:9050/", "http://127.0.0.1:9050"),
        ("", None),
    ],
)
def test_endpoints_normalize(value, expected):
    assert normalize_endpoint(value) == expected


SLIDE_FLAGS = ["--slides", "s.csv", "--model", "m=m.pt2"]


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--output", "bq://p-123.d"], "--temp_location"),
        (["--output", "bq://p-123.d", "--temp_location", "/tmp/x"], "--temp_location"),
        (["--output", "bq://p-123.d", "--temp_location", "gs://b/t"], "--artifacts"),
        (["--output", "bq://P.d", "--temp_location", "gs://b/t", "--no_heatmaps"], "--output"),
        (["--slides", "bq://p-123.only_dataset"], "--slides"),
    ],
)
def test_bad_bigquery_flags_fail_before_launch(extra, flag):
    with pytest.raises(ConfigError, match=flag):
        slide_job_config(PipelineOptions(SLIDE_FLAGS + extra))


def test_bigquery_output_config():
    cfg = slide_job_config(
        PipelineOptions(
            SLIDE_FLAGS
            + ["--output", "bq://p-123.d", "--temp_location", "gs://b/t/", "--artifacts", "gs://a/"]
            + ["--bigquery_endpoint", "127.0.0.1:9050", "--skip_existing"]
        )
    )
    dest = cfg.destination
    assert dest.bigquery == BigQueryDataset("p-123", "d", "http://127.0.0.1:9050")
    assert (dest.temp_location, dest.artifacts) == ("gs://b/t", "gs://a")
    assert cfg.skip_existing
    text = text_job_config(
        PipelineOptions(
            ["--documents", "d.jsonl", "--model", "n=x", "--task", "n=embedding"]
            + ["--output", "bq://p-123.d", "--temp_location", "gs://b/t"]
        )
    )
    assert text.destination.bigquery is not None and text.destination.artifacts is None


def test_beam_s_private_bigquery_client_is_still_there():
    """``EndpointClient`` builds Beam's own apitools BigQuery client (no public route points
    Beam's sink at another endpoint): this fails first if Beam moves or changes it."""
    import inspect

    from apache_beam.internal.gcp import auth
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
    from apache_beam.options.pipeline_options import PipelineOptions

    parameters = inspect.signature(BigqueryV2.__init__).parameters
    assert {"url", "credentials", "get_credentials"} <= set(parameters)
    assert callable(auth.get_service_credentials)
    assert list(inspect.signature(auth.get_service_credentials).parameters) == ["pipeline_options"]
    assert isinstance(PipelineOptions([]), PipelineOptions)
    api = BigqueryV2(url="http://127.0.0.1:9/bigquery/v2/", credentials=None, get_credentials=False)
    assert api.url == "http://127.0.0.1:9/bigquery/v2/" and hasattr(api, "tables")
