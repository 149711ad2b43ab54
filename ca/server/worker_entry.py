"""Where a ``meshca ca serve --workers N`` worker process starts (the spawn target).

It is the worker's counterpart of the CLI entry: at module level it imports only the standard
library and :mod:`ca.logs`, and the server's modules are passed by name, so the worker routes
Python warnings into logging before it imports them and the libraries they use. A warning a
library gives on import then reaches the worker's log as a record in its ``--log-format``, never
as a raw line in the middle of a JSON stream.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from ca.logs import capture_warnings


def reference(function: Callable[..., Any]) -> str:
    """``module:qualified.name`` of a module-level ``function``, to pass to a worker."""
    return f"{function.__module__}:{function.__qualname__}"


def resolve(ref: str) -> Any:
    """The object a :func:`reference` names (importing its module)."""
    module, _, name = ref.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def run_worker(
    settings_data: dict[str, Any],
    verifiers_ref: str,
    ready_flag: Synchronized[int],
    log_level: str,
) -> None:
    """Capture warnings, then import the server and serve as one worker."""
    capture_warnings()
    from ca.server.process import worker_main  # noqa: PLC0415 - after capture_warnings

    worker_main(settings_data, resolve(verifiers_ref), ready_flag, log_level)
