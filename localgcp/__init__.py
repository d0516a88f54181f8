"""Local stand-ins for GCS and BigQuery, for tests and offline runs. Not shipped in the wheel.

``python -m localgcp`` starts both emulators on 127.0.0.1 and prints the environment that points
the pipelines at them; the pytest fixtures in ``tests/conftest.py`` use ``localgcp.cluster``.
"""
