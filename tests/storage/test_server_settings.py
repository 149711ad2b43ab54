"""The settings serving processes record (the reissue window), on SQLite and PostgreSQL: the last
server to start wins, and a database without a report, or from before the table, says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from ca.storage import migrate
from ca.storage.server_settings import ReportedWindow, ServerSettings

STARTED = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)


def test_nothing_reported_is_none(migrated_engine: Engine) -> None:
    assert ServerSettings(migrated_engine).reissue_window() is None


def test_the_last_server_to_start_wins(migrated_engine: Engine) -> None:
    first, second = ServerSettings(migrated_engine), ServerSettings(migrated_engine)

    first.record_reissue_window(timedelta(minutes=5), by="meshca-server a pid 1", now=STARTED)
    assert second.reissue_window() == ReportedWindow(
        timedelta(minutes=5), "meshca-server a pid 1", STARTED
    )

    later = STARTED + timedelta(seconds=3)
    second.record_reissue_window(timedelta(seconds=7.5), by="meshca-server b pid 2", now=later)
    assert first.reissue_window() == ReportedWindow(
        timedelta(seconds=7.5), "meshca-server b pid 2", later
    )


def test_a_schema_from_before_the_table_reads_as_nothing_reported(engine: Engine) -> None:
    """A newer CLI on a database not upgraded yet: `root activate` must still print its line
    (after the step it made), not fail."""
    migrate.upgrade(engine, "0002")

    assert ServerSettings(engine).reissue_window() is None
