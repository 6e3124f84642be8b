"""Webhook sink: one HTTP POST of JSON per alert, with the standard library's
http.client and ssl (certificate and host name verification on by default).

Within one attempt a failed POST is retried `retries` times with exponential
backoff and full jitter; the worker's circuit breaker and dead-letter policy
take over when the attempt fails. 2xx is success; 408, 429 and 5xx and network
errors are worth retrying; any other status is a permanent failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import random
import ssl
import urllib.parse

from daemoneye import __version__

from .base import Delivery, Sink, SinkError

RETRYABLE_STATUS = {408, 425, 429}
BACKOFF_BASE_S = 0.1
MAX_ERROR_BODY = 200


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)]."""
    return random.uniform(0, min(max_s, base_s * (2**attempt)))


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.url = urllib.parse.urlsplit(cfg.url)
        self.target = self.url.path or "/"
        if self.url.query:
            self.target += "?" + self.url.query
        self.ssl_context: ssl.SSLContext | None = None
        if self.url.scheme == "https":
            self.ssl_context = ssl.create_default_context(
                cafile=str(cfg.ca_file) if cfg.ca_file else None
            )
            if not cfg.verify_tls:
                self.ssl_context.check_hostname = False
                self.ssl_context.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPConnection | None = None
        self.posts = 0
        self.failures = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port, timeout = self.url.hostname or "", self.url.port, self.config.timeout_s
            if self.ssl_context is not None:
                self._conn = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=self.ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return self._conn

    def headers(self, item: Delivery, body: bytes) -> dict[str, str]:
        cfg = self.config
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"daemoneye/{__version__}",
            "Idempotency-Key": str(item.key),  # lets receivers drop an at-least-once repeat
            **cfg.headers,
        }
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        if cfg.hmac_secret:
            digest = hmac.new(cfg.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-DaemonEye-Signature"] = f"sha256={digest}"
        return headers

    def post(self, item: Delivery) -> None:
        """One POST; raises SinkError (retryable or not) unless the answer is 2xx."""
        self.posts += 1
        try:
            conn = self._connection()
            body = self.body(item)  # our JSON, or OCSF / ECS (`format`)
            conn.request("POST", self.target, body=body, headers=self.headers(item, body))
            response = conn.getresponse()
            body = response.read(MAX_ERROR_BODY + 1)
            if response.will_close:
                self._drop_connection()
        except ssl.SSLCertVerificationError as exc:
            self._drop_connection()
            # Retrying cannot fix a certificate: dead-letter it, `alerts retry` after the fix.
            raise SinkError(
                f"POST {self.config.url}: TLS verification failed: {exc}", retryable=False
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise SinkError(f"POST {self.config.url}: {type(exc).__name__}: {exc}") from None
        status = response.status
        if 200 <= status < 300:
            return
        text = body[:MAX_ERROR_BODY].decode("utf-8", "replace")
        retryable = status >= 500 or status in RETRYABLE_STATUS
        raise SinkError(f"POST {self.config.url}: HTTP {status} {text!r}", retryable=retryable)

    def send(self, batch: list[Delivery]) -> None:
        for done, item in enumerate(batch):
            for attempt in range(self.config.retries + 1):
                try:
                    self.post(item)
                    break
                except SinkError as exc:
                    self.failures += 1
                    if not exc.retryable or attempt == self.config.retries:
                        exc.done = done
                        raise
                    delay = backoff_delay(attempt, BACKOFF_BASE_S, self.config.backoff_max_s)
                    if self.stop.wait(delay):  # shutting down: leave it pending
                        exc.done = done
                        raise

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop_connection()

    def metrics(self) -> dict[str, float]:
        return {"posts": self.posts, "failures": self.failures}
