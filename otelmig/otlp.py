"""The trace of a run, sent over OTLP/HTTP with the JSON encoding (docs/tracing.md).

Standard library only (json, urllib): no protobuf, no compiled file, and the
pyz stays pure. cli imports this module only when OTEL_EXPORTER_OTLP_ENDPOINT
or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and OTEL_SDK_DISABLED is not
true), so no other run, and `check` above all, pays for it.

What the environment says, as the OpenTelemetry specification reads it:
- OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the URL itself; else
  OTEL_EXPORTER_OTLP_ENDPOINT plus `/v1/traces`;
- OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: `key=value,...`, values %-decoded;
  each value is a secret to the redactor (an API key never reaches output);
- OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT: milliseconds (default 10000), the
  longest the export may take in all: it runs in a thread that is waited
  for that long and then abandoned, so a dead, slow or unresolvable endpoint
  costs at most the timeout, once;
- OTEL_SERVICE_NAME (default `otelmig`) and OTEL_RESOURCE_ATTRIBUTES;
- TRACEPARENT (otelmig/run.py): the run joins the caller's trace; a parent
  that is not sampled (flags 00) is honoured: nothing is sent.

Export never changes the outcome: whatever goes wrong is one warning line on
stderr, and the exit code is the run's. Every string sent passes through the
redactor, and no statement text or parameter value is ever sent (statement
spans carry a summary: the operation and the table).
"""

import json
import os
import platform
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from otelmig import redact
from otelmig._version import __version__

DEFAULT_TIMEOUT_MS = 10000
TRACES_PATH = "v1/traces"


class Config(NamedTuple):
    endpoint: str
    headers: Dict[str, str]
    timeout: float  # seconds
    resource: Dict[str, object]


def _env(env, name: str) -> Optional[str]:
    """The traces-specific variable, else the general one (OTEL_EXPORTER_OTLP_TRACES_X, OTEL_EXPORTER_OTLP_X)."""
    return env.get("OTEL_EXPORTER_OTLP_TRACES_" + name) or env.get("OTEL_EXPORTER_OTLP_" + name) or None


def endpoint(env) -> Optional[str]:
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces.strip()
    base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if not base:
        return None
    return base + ("" if base.endswith("/") else "/") + TRACES_PATH


def parse_pairs(text: Optional[str], what: str, warnings: List[str]) -> Dict[str, str]:
    """`key=value,key2=value2` (W3C baggage-like, %-decoded), as OTEL_* lists are written."""
    pairs = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            warnings.append("%s: %r is not key=value; ignored" % (what, item.split("=")[0].strip()))
            continue
        pairs[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return pairs


def timeout_seconds(env, warnings: List[str]) -> float:
    text = _env(env, "TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT_MS / 1000.0
    try:
        milliseconds = float(text)
        if milliseconds <= 0:
            raise ValueError
    except ValueError:
        warnings.append("OTEL_EXPORTER_OTLP_TIMEOUT must be a positive number of milliseconds, not %r; "
                        "%d ms used" % (text, DEFAULT_TIMEOUT_MS))
        return DEFAULT_TIMEOUT_MS / 1000.0
    return milliseconds / 1000.0


def resource(env, warnings: List[str]) -> Dict[str, object]:
    """The resource: OTEL_RESOURCE_ATTRIBUTES, then what otelmig knows; OTEL_SERVICE_NAME wins for service.name."""
    attributes: Dict[str, object] = {"service.name": "otelmig"}
    attributes.update(parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES", warnings))
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    attributes.setdefault("service.version", __version__)
    attributes.update({"telemetry.sdk.name": "otelmig", "telemetry.sdk.language": "python",
                       "telemetry.sdk.version": __version__, "host.name": socket.gethostname(),
                       "process.pid": os.getpid(), "process.runtime.name": platform.python_implementation(),
                       "process.runtime.version": platform.python_version()})
    return attributes


def config(env) -> Tuple[Optional[Config], List[str]]:
    """The exporter's configuration from the environment, and what was wrong with it."""
    warnings: List[str] = []
    url = endpoint(env)
    if not url or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        warnings.append("the OTLP endpoint %r is not an http:// or https:// URL; no trace is sent" % (url or ""))
        return None, warnings
    headers = parse_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS", warnings)
    headers.update(parse_pairs(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                               warnings))
    for value in headers.values():
        redact.register(value)  # an API key or a bearer token is a secret like a password
    return Config(url, headers, timeout_seconds(env, warnings), resource(env, warnings)), warnings


def exporter(env, warn: Callable[[str], None]) -> Callable:
    """A finisher (otelmig/run.py) that sends the run's trace; configuration problems are warnings."""
    settings, problems = config(env)
    for problem in problems:
        warn("warning: %s" % redact.redact(problem))

    def export(run_) -> None:
        if settings is None or not run_.reached_database or not run_.sampled:
            return
        failure = send(settings, encode(run_, settings.resource))
        if failure:
            warn(redact.redact("warning: the run's trace was not exported to %s: %s; the run's outcome stands"
                               % (settings.endpoint, failure)))
    return export


# -- encoding: OTLP/JSON (opentelemetry-proto's ExportTraceServiceRequest) -------------

def _value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP/JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": redact.redact(str(value))}


def _attributes(attributes: dict) -> List[dict]:
    return [{"key": key, "value": _value(value)} for key, value in attributes.items() if value is not None]


def _span(span, trace_id: str) -> dict:
    encoded = {"traceId": trace_id, "spanId": span.span_id, "name": redact.redact(span.name), "kind": span.kind,
               "startTimeUnixNano": str(span.start_ns), "endTimeUnixNano": str(span.end_ns or span.start_ns),
               "attributes": _attributes(span.attributes),
               "status": {"code": span.status, "message": redact.redact(span.status_message)}}
    if span.parent_id:
        encoded["parentSpanId"] = span.parent_id
    if span.events:
        encoded["events"] = [{"name": name, "timeUnixNano": str(at), "attributes": _attributes(attributes)}
                             for name, at, attributes in span.events]
    return encoded


def encode(run_, resource_attributes: dict) -> bytes:
    request = {"resourceSpans": [{
        "resource": {"attributes": _attributes(resource_attributes)},
        "scopeSpans": [{"scope": {"name": "otelmig", "version": __version__},
                        "spans": [_span(span, run_.trace_id) for span in run_.spans]}],
    }]}
    return json.dumps(request, separators=(",", ":")).encode("utf-8")


# -- sending ---------------------------------------------------------------------------

def send(settings: Config, body: bytes) -> Optional[str]:
    """POST the body; None when the collector took it, else why not. Bounded by the
    timeout in all (the request runs in a daemon thread, abandoned after it)."""
    outcome: List[Optional[str]] = []
    worker = threading.Thread(target=lambda: outcome.append(_post(settings, body)), name="otelmig-otlp",
                              daemon=True)
    worker.start()
    worker.join(settings.timeout)
    if not outcome:
        return _silent(settings)
    return outcome[0]


def _silent(settings: Config) -> str:
    return "no answer within %gs (OTEL_EXPORTER_OTLP_TIMEOUT)" % settings.timeout


def _post(settings: Config, body: bytes) -> Optional[str]:
    headers = dict(settings.headers, **{"Content-Type": "application/json", "User-Agent": "otelmig/" + __version__})
    request = urllib.request.Request(settings.endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        return "HTTP %d %s" % (exc.code, exc.reason)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, (socket.timeout, TimeoutError)):  # the socket's own timeout, the same bound
            return _silent(settings)
        return str(reason)
    return _partial_success(answer)


def _partial_success(answer: bytes) -> Optional[str]:
    """A 200 may still reject spans (ExportTraceServiceResponse.partialSuccess)."""
    try:
        partial = json.loads(answer or b"{}").get("partialSuccess") or {}
    except (ValueError, AttributeError):
        return None
    rejected = int(partial.get("rejectedSpans") or 0)
    if rejected:
        return "the collector rejected %d span(s): %s" % (rejected, partial.get("errorMessage") or "no reason given")
    return None
