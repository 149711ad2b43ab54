"""Log output: JSON lines a log pipeline can parse (one object per record, the ``extra=`` fields
as keys, absent values left out) and text lines with ``key=value`` fields; and
``configure_logging`` sending exactly one stream to stderr at the level asked for."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ca.logs import (
    JsonFormatter,
    TextFormatter,
    capture_warnings,
    configure_logging,
    record_fields,
    release_warnings,
)

LOGGER = "ca.server.certificate_service"
CREATED = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def make_record(
    message: str = "issued %s",
    args: tuple[object, ...] = ("ok",),
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    record = logging.getLogger(LOGGER).makeRecord(
        LOGGER, level, __file__, 1, message, args, exc_info, extra=extra
    )
    record.created = CREATED.timestamp()
    return record


def json_line(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


# --- JSON -----------------------------------------------------------------------------------


def test_json_line_holds_time_level_logger_message_and_extra_fields() -> None:
    record = make_record(
        extra={
            "request_id": "4f1c",
            "spiffe_id": "spiffe://cluster.local/ns/default/sa/web",
            "serial": "00ab",
            "result": "issued",
            "port": 15012,
            "tls": True,
        }
    )

    assert json_line(record) == {
        "time": "2030-01-02T03:04:05.678+00:00",
        "level": "info",
        "logger": LOGGER,
        "message": "issued ok",
        "request_id": "4f1c",
        "spiffe_id": "spiffe://cluster.local/ns/default/sa/web",
        "serial": "00ab",
        "result": "issued",
        "port": 15012,
        "tls": True,
    }


@pytest.mark.parametrize(
    ("level", "name"),
    [
        pytest.param(logging.DEBUG, "debug", id="debug"),
        pytest.param(logging.INFO, "info", id="info"),
        pytest.param(logging.WARNING, "warning", id="warning"),
        pytest.param(logging.ERROR, "error", id="error"),
        pytest.param(logging.CRITICAL, "critical", id="critical"),
    ],
)
def test_json_level_is_lower_case(level: int, name: str) -> None:
    assert json_line(make_record(level=level))["level"] == name


def test_json_time_is_utc_iso_8601_with_milliseconds() -> None:
    time = json_line(make_record())["time"]
    assert time == "2030-01-02T03:04:05.678+00:00"
    assert datetime.fromisoformat(time) == CREATED


def test_json_leaves_out_fields_without_a_value() -> None:
    # A refusal before authentication has no SPIFFE ID; the key is absent, not null.
    entry = json_line(make_record(extra={"request_id": "r1", "spiffe_id": None, "reason": "x"}))
    assert "spiffe_id" not in entry
    assert entry["request_id"] == "r1"
    assert entry["reason"] == "x"


def test_json_has_no_standard_record_attributes_beyond_its_four() -> None:
    assert set(json_line(make_record())) == {"time", "level", "logger", "message"}


def test_json_renders_values_it_cannot_serialise_as_text() -> None:
    when = datetime(2031, 5, 6, tzinfo=UTC)
    entry = json_line(make_record(extra={"not_after": when, "path": object}))
    assert entry["not_after"] == str(when)
    assert entry["path"] == str(object)


def test_json_escapes_newlines_and_quotes_so_each_record_stays_one_line() -> None:
    record = make_record('line one\nline "two"', (), extra={"detail": "a\nb"})
    entry = json_line(record)
    assert entry["message"] == 'line one\nline "two"'
    assert entry["detail"] == "a\nb"


def test_json_includes_the_exception_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record("failed", (), level=logging.ERROR, exc_info=sys.exc_info())

    entry = json_line(record)

    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in entry["exception"]


def test_record_fields_are_only_the_extra_fields() -> None:
    record = make_record(extra={"serial": "01", "reason": None})
    assert record_fields(record) == {"serial": "01"}


# --- text -----------------------------------------------------------------------------------


def test_text_line_appends_extra_fields_as_key_value() -> None:
    record = make_record(extra={"request_id": "4f1c", "serial": "00ab", "spiffe_id": None})

    line = TextFormatter().format(record)

    assert line.endswith(f" INFO {LOGGER}: issued ok request_id=4f1c serial=00ab")
    assert "spiffe_id" not in line


def test_text_fields_stay_on_the_message_line_when_there_is_a_traceback() -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        record = make_record(
            "failed", (), level=logging.ERROR, exc_info=sys.exc_info(), extra={"request_id": "r1"}
        )

    first, *rest = TextFormatter().format(record).splitlines()

    assert first.endswith(f" ERROR {LOGGER}: failed request_id=r1")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ZeroDivisionError: boom"


def test_text_line_without_fields_is_just_the_message() -> None:
    line = TextFormatter().format(make_record())
    assert line.endswith(f" INFO {LOGGER}: issued ok")


# --- configure_logging ----------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_json_writes_one_object_per_line_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("ca.test_logs")

    log.debug("not shown")
    log.info("issued", extra={"serial": "01"})
    log.warning("slow", extra={"ms": 250})

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["level"], e["message"]) for e in entries] == [
        ("info", "issued"),
        ("warning", "slow"),
    ]
    assert entries[0]["serial"] == "01"
    assert entries[1]["ms"] == 250


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_text_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "text")

    logging.getLogger("ca.test_logs").debug("detail", extra={"reason": "why"})

    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("DEBUG ca.test_logs: detail reason=why")


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_replaces_earlier_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text")
    configure_logging("info", "json")

    logging.getLogger("ca.test_logs").info("once")

    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "once"
    assert len(logging.getLogger().handlers) == 1


# --- Python warnings into logging -----------------------------------------------------------


class ThirdPartyDeprecationWarning(UserWarning):
    """Like cryptography's CryptographyDeprecationWarning: a deprecation by name only."""


@pytest.fixture
def routed_warnings(restore_root_logger: None) -> Iterator[None]:
    """Warnings captured as the CLI entry does it (restored afterwards); every warning shown,
    so each test sees its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        capture_warnings()
        try:
            yield
        finally:
            release_warnings()


@pytest.mark.usefixtures("routed_warnings")
def test_warnings_before_logging_is_configured_come_out_in_its_final_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    warnings.warn("DSA is deprecated", ThirdPartyDeprecationWarning, stacklevel=1)
    warnings.warn("old API", DeprecationWarning, stacklevel=1)
    warnings.warn("odd input", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""  # held: the process has not chosen its format yet

    configure_logging("debug", "json")

    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], e["message"], e["warning_category"]) for e in entries] == [
        ("debug", "py.warnings", "DSA is deprecated", "ThirdPartyDeprecationWarning"),
        ("debug", "py.warnings", "old API", "DeprecationWarning"),
        ("warning", "py.warnings", "odd input", "UserWarning"),
    ]
    assert all(e["source"].startswith(f"{__file__}:") for e in entries)


@pytest.mark.usefixtures("routed_warnings")
def test_deprecations_stay_out_of_an_operators_log_and_other_warnings_are_records(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "text")

    warnings.warn("DSA is deprecated", ThirdPartyDeprecationWarning, stacklevel=1)
    warnings.warn("odd input", UserWarning, stacklevel=1)

    (line,) = capsys.readouterr().err.splitlines()
    assert " WARNING py.warnings: odd input warning_category=UserWarning source=" in line


@pytest.mark.usefixtures("routed_warnings")
def test_warnings_are_held_until_released_when_nothing_configures_logging(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.basicConfig(level="WARNING", stream=sys.stderr, force=True)
    warnings.warn("odd input", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""

    release_warnings()

    assert capsys.readouterr().err.splitlines() == ["WARNING:py.warnings:odd input"]


def test_the_cli_entry_imports_no_library_that_could_warn_before_capturing() -> None:
    """``meshca`` captures warnings first thing in ``main()``; that only works while importing
    ``ca.cli.main`` loads no third-party module but click (py-spiffe, for one, warns on import
    under newer cryptography)."""
    probe = (
        "import sys; import ca.cli.main; "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    third_party = {
        name
        for name in loaded
        if name not in sys.stdlib_module_names and not name.startswith("_") and name != "ca"
    }
    assert third_party == {"click"}
