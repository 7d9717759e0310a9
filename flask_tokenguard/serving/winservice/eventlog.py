"""Warnings and errors of the service to the Windows Event Log, under the service's name."""

from __future__ import annotations

import logging
import typing as t


class EventLogHandler(logging.Handler):
    """Write records to the Event Log through ``servicemanager``, under the service.

    Not ``logging.handlers.NTEventLogHandler(name)``: it registers the event source
    ``name`` again with win32service.pyd as its message file, overwriting the
    registration pythonservice.exe made with servicemanager.pyd, after which Event
    Viewer can no longer render the service's messages. ``servicemanager.Log*Msg``
    log under the service's own source with the messages registered for it.
    """

    def __init__(self, servicemanager: t.Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._servicemanager = servicemanager

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` as an error, a warning or an information event."""
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self._servicemanager.LogErrorMsg(message)
            elif record.levelno >= logging.WARNING:
                self._servicemanager.LogWarningMsg(message)
            else:
                self._servicemanager.LogInfoMsg(message)
        except Exception:  # noqa: BLE001 - logging must not raise; handleError reports it
            self.handleError(record)
