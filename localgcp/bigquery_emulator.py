"""Start ``bqemulator`` offline.

bqemulator aborts at start-up when DuckDB cannot download its ``spatial`` extension, which it
only needs for GEOGRAPHY columns. This launcher makes that load best-effort, then hands over to
the emulator's own CLI: ``python -m localgcp.bigquery_emulator start --rest-port 9050``.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("localgcp.bigquery")


def _spatial_is_optional() -> None:
    from bqemulator.storage import engine

    def load_spatial_if_available(self) -> None:
        try:
            self._connection.execute("LOAD spatial")
        except Exception as exc:  # noqa: BLE001 - offline: the extension cannot be fetched
            log.warning("DuckDB spatial extension unavailable; GEOGRAPHY is disabled (%s)", exc)

    engine.DuckDBEngine._load_spatial = load_spatial_if_available  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    _spatial_is_optional()
    from bqemulator.cli import main as bqemulator_cli

    bqemulator_cli(args=argv if argv is not None else sys.argv[1:], prog_name="bqemulator")


if __name__ == "__main__":
    main()
