"""Log records that hps says better itself, dropped at their source (light: the standard library only)."""

from __future__ import annotations

import logging


class DropPrefix(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# urllib3 warns once per retried request ("Retrying (Retry(total=0, ...)) after connection broken by ..."): a
# 15-second tracking-server outage printed 163 such lines. The tracking writer says it in two: when the server goes
# away and when it is back.
URLLIB3_RETRIES_DROPPED = DropPrefix("Retrying (")


def drop_http_retry_warnings() -> None:
    """Silence urllib3's per-request retry warnings (a no-op once done)."""
    logging.getLogger("urllib3.connectionpool").addFilter(URLLIB3_RETRIES_DROPPED)
