"""Structured logging set-up: structlog and standard-library logging to stderr, secrets redacted from
everything before it is written.

Three layers, so a secret that slips past one is caught by the next:
* fields whose *name* says secret (`password`, `token`, ...) are replaced by `***`;
* every rendered line — messages, tracebacks, botocore's DEBUG dumps of requests — has known secret
  values (`register_secret`: credentials, user data, in plain, base64 and URL-encoded forms) and
  credential-shaped text (AWS key ids, `Credential=`/`Signature=`, session tokens, `UserData`,
  bearer tokens, passwords in URLs) cut out;
* tracebacks are rendered plainly, never with local variables (where a pilot token may sit), and in
  JSON mode they are kept, redacted, in the `exception` field.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

# Field names whose values are never written, whatever logs them.
SECRET_KEYS = re.compile(
    r"(pass(word)?|secret|token|credential|api[_-]?key|private[_-]?key|authorization|user[_-]?data)", re.I
)
REDACTED = "***"

_MIN_SECRET = 6  # shorter values would redact ordinary words
_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Credential-shaped text, whoever writes it (botocore request dumps, exception messages...).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{12,}\b"), "<key-id>"),
    (re.compile(r"((?:Credential|Signature|SignedHeaders)=)[^,\s'\"&]+"), r"\1" + REDACTED),
    (
        re.compile(
            r"((?:X-Amz-Security-Token|aws_session_token|aws_secret_access_key|SecretAccessKey|"
            r"SessionToken|UserData|user_data|userData|startup-script)['\"]?\s*[:=]\s*b?['\"]?)"
            r"[^'\"&,\s}]+",
            re.I,
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1" + REDACTED),
    # NAME=value where the name says secret (a pilot's `export PILOT_TOKEN=...` quoted in an error).
    (
        re.compile(
            r"(\b[A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|private[_-]?key)[A-Za-z0-9_.-]*"
            r"['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^'\"\s&,}\\]+",
            re.I,
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
)


def register_secret(value: str | bytes | None) -> None:
    """Never write this value (nor its base64 or URL-encoded forms) to any log output."""
    if not value:
        return
    raw = value.encode() if isinstance(value, str) else value
    text = raw.decode(errors="replace")
    forms = {text, base64.b64encode(raw).decode(), urllib.parse.quote_plus(text)}
    forms.add(urllib.parse.quote_plus(base64.b64encode(raw).decode()))
    # Each line of a multi-line secret (user data scripts) on its own too.
    forms.update(line.strip() for line in text.splitlines())
    with _secrets_lock:
        _secrets.update(f for f in forms if len(f) >= _MIN_SECRET)


def redact_text(text: str) -> str:
    """`text` with every registered secret and credential-shaped substring cut out."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and SECRET_KEYS.search(key):
            event[key] = REDACTED
    return event


def _redacting(renderer: Callable[..., Any]) -> Callable[..., str]:
    """The renderer, with the finished line redacted (it holds the traceback text too)."""

    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        return redact_text(str(renderer(logger, method, event)))

    return render


class RedactingFormatter(logging.Formatter):
    """Standard-library records (boto3, botocore, urllib3, uvicorn...) redacted like structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))

    def formatException(self, ei: Any) -> str:
        return redact_text(super().formatException(ei))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever sys.stderr is at the time of the record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if json:
        # The traceback as plain text in `exception` (no locals), redacted with the whole line.
        processors += [structlog.processors.format_exc_info, _redacting(structlog.processors.JSONRenderer())]
    else:
        # plain_traceback: never rich's `show_locals` rendering, where credentials and tokens sit.
        console = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        processors.append(_redacting(console))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Resolve sys.stderr on each use, not once: it may be replaced (test capture, daemons).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _install_record_redaction()
    root = logging.getLogger()
    root.setLevel(numeric)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def _install_record_redaction() -> None:
    """Redact each standard-library record's message when it is made, so every handler (ours, uvicorn's,
    a test harness's) only ever sees the redacted text."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_provisioner_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        redacted = redact_text(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return record

    factory._provisioner_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
