"""Publishing to NATS JetStream from synchronous threads, and reading it back.

nats-py is an asyncio client; DaemonEye's services are not. A `JetStreamLink` owns one
event loop in its own thread, where the client connects, reconnects, answers the
server's pings and publishes. Callers on other threads (an alerter sink worker, the
broker's uplink thread) hand it a batch and wait for the acknowledgements with a
deadline: no service loop ever waits on NATS.

At-least-once: a message counts as published only once JetStream acknowledged it
(stored, and replicated when the stream has replicas). Each carries a `Nats-Msg-Id`
that stays the same when it is sent again, so a retry after a lost acknowledgement
is stored once (the stream's duplicate window, `duplicate_window_s`).

The link tells apart why it is down (`LinkStats.reason`): `down` (no server
answers), `refused` (the server refused our credentials), `tls` (the handshake
failed), `no_stream` (no stream captures the subject). It comes up without waiting
for the caller's next retry: `on_up` is called when a connection is made or remade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from daemoneye.config import ConfigError
from daemoneye.settings.nats import NatsConnection

log = logging.getLogger("daemoneye.jetstream")

MSG_ID = "Nats-Msg-Id"
HOST_HEADER = "DaemonEye-Host"
TOPIC_HEADER = "DaemonEye-Topic"
MAX_IN_FLIGHT = 256  # publishes awaiting their ack at once within one batch
CLOSE_TIMEOUT_S = 5.0
STOP_POLL_S = 0.1  # how often a caller's wait for acks looks at its stop event
_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_\-]")


def host_token(hostname: str) -> str:
    """A host name as one subject token: `web1.example.com` -> `web1_example_com`."""
    return _NOT_A_TOKEN.sub("_", hostname) or "_"


def subject_of(cfg: NatsConnection, hostname: str, topic: str) -> str:
    """`<prefix>.<host>.<bus topic>`: `daemoneye.web1.alerts.high`."""
    return f"{cfg.subject_prefix}.{host_token(hostname)}.{topic}"


class JetStreamError(Exception):
    """A failed publish or read: `reason` (down, refused, tls, no_stream, rejected,
    timeout) says which; `done` items at the front of a batch were acknowledged."""

    def __init__(self, message: str, reason: str, done: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.done = done

    @property
    def retryable(self) -> bool:
        return self.reason != "rejected"


@dataclass
class Outgoing:
    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] | None = None


@dataclass
class LinkStats:
    link_up: bool = False
    reason: str = "connecting"  # up, connecting, down, refused, tls, no_stream
    last_error: str = ""
    published: int = 0
    duplicates: int = 0  # acks that said "already stored": a retry after a lost ack
    failures: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(exc: BaseException, tls_handshake: bool = False) -> str:
    """Why a connection or request failed, as one of LinkStats.reason's words.

    `tls_handshake`: the error ended a TLS connection that never came up. A server
    that wants a client certificate sends its alert after the client's side of a TLS
    1.3 handshake is done, so the client may see only the reset that follows it:
    that is a TLS refusal, not a server that is down (which refuses the connection).
    """
    text = str(exc).lower()
    if tls_handshake and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "tls"
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
        return "refused"
    if "authentication" in text or "user authentication" in text:
        return "refused"
    if isinstance(exc, ssl.SSLError) or "tls" in text or "ssl" in text:
        return "tls"
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no_stream"
    return "down"


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if text.startswith("nats") else f"{type(exc).__name__}: {text}"


def connect_options(cfg: NatsConnection, name: str) -> dict[str, Any]:
    """nats-py's connect() arguments for these settings: TLS context, NKEY or creds."""
    options: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": name,
        "connect_timeout": cfg.connect_timeout_s,
        "reconnect_time_wait": cfg.reconnect_wait_s,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # a fleet's link never gives up; the queue waits
    }
    if cfg.uses_tls():
        context = ssl.create_default_context(
            cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None
        )
        if cfg.tls_cert_file and cfg.tls_key_file:
            context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
        options["tls"] = context
    if cfg.creds_file:
        options["user_credentials"] = str(cfg.creds_file)
    if cfg.nkey_seed_file:
        options["nkeys_seed"] = str(cfg.nkey_seed_file)
    return options


def check_files(cfg: NatsConnection) -> None:
    """Name a missing credentials, seed or certificate file at start, not at first use."""
    for label in ("creds_file", "nkey_seed_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(cfg, label)
        if path is not None and not path.is_file():
            raise ConfigError(f"nats {label} {path} does not exist or is not a file")


async def ensure_stream(js: Any, cfg: NatsConnection) -> None:
    """Create the stream when asked to and it is missing; an existing one is left as is."""
    if not cfg.create_stream:
        return
    try:
        await js.stream_info(cfg.stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(
        name=cfg.stream,
        subjects=[f"{cfg.subject_prefix}.>"],
        storage=api.StorageType.FILE,
        duplicate_window=cfg.duplicate_window_s,
        max_age=cfg.max_age_days * 86400 if cfg.max_age_days else None,
        num_replicas=cfg.replicas,
    )
    log.info("created JetStream stream %s over %s.>", cfg.stream, cfg.subject_prefix)


class JetStreamLink:
    """One NATS connection on its own event-loop thread; publish() from any thread."""

    def __init__(
        self, cfg: NatsConnection, name: str, on_up: Callable[[], None] | None = None
    ) -> None:
        check_files(cfg)
        self.cfg = cfg
        self.name = name
        self.on_up = on_up
        self.stats = LinkStats()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"nats-{name}", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._stream_checked = False
        self._closing = False
        self._connect_task: asyncio.Task[Any] | None = None

    # --- called from other threads --------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self.loop)

    def publish(self, items: list[Outgoing], stop: threading.Event | None = None) -> int:
        """Publish in order and wait for every ack; return how many were stored anew
        (the rest were duplicates). Raises JetStreamError with `done` = how many at the
        front of `items` were acknowledged. `stop` set (shutdown) ends the wait early:
        what was not acknowledged counts as not sent."""
        if not items:
            return 0
        chunks = -(-len(items) // MAX_IN_FLIGHT)
        budget = self.cfg.ack_timeout_s * (chunks + 1)
        return self._call(self._publish(items), budget, stop)

    def close(self) -> None:
        if not self._thread.is_alive():
            self.loop.close()
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(CLOSE_TIMEOUT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()

    def _call(
        self, coro: Coroutine[Any, Any, Any], timeout_s: float, stop: threading.Event | None
    ) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return future.result(STOP_POLL_S if stop is not None else timeout_s)
            except TimeoutError:
                if stop is not None and stop.is_set():
                    future.cancel()
                    raise JetStreamError("stopping: acks not awaited", "down") from None
                if time.monotonic() >= deadline or stop is None:
                    future.cancel()
                    raise JetStreamError(
                        f"no answer from NATS within {timeout_s:g} s", "timeout"
                    ) from None

    # --- on the loop thread ----------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _connect(self) -> None:
        self._connect_task = asyncio.current_task()
        self._nc = nats.NATS()
        try:
            await self._nc.connect(
                **connect_options(self.cfg, self.name),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # only when nats-py gives up; it retries forever here
            self._down(exc)
            return
        self._js = self._nc.jetstream(timeout=self.cfg.ack_timeout_s)
        await self._on_reconnected(first=True)

    async def _on_error(self, exc: Exception) -> None:
        self._down(exc)

    async def _on_disconnected(self) -> None:
        if self.stats.link_up and not self._closing:
            log.warning("NATS link %s down", self.name)
        self.stats.link_up = False
        if self.stats.reason == "up":
            self.stats.reason = "down"

    async def _on_reconnected(self, first: bool = False) -> None:
        if not first:
            self.stats.reconnects += 1
        self.stats.link_up = True
        self.stats.reason = "up"
        url = self._nc.connected_url.netloc if self._nc.connected_url else "?"
        log.info("NATS link %s up (%s)", self.name, url)
        if self.on_up is not None:
            try:
                self.on_up()
            except Exception:  # a caller's bug must not stop the client's loop
                log.exception("NATS link %s: on_up failed", self.name)

    def _down(self, exc: BaseException) -> None:
        reason = classify(exc, tls_handshake=self.cfg.uses_tls() and not self.stats.link_up)
        message = describe(exc)
        if reason == "refused":
            message = f"the NATS server refused our credentials ({message})"
        if message != self.stats.last_error:
            log.warning("NATS link %s: %s", self.name, message)
        self.stats.last_error = message
        if not (self._nc is not None and self._nc.is_connected):
            self.stats.link_up = False
            self.stats.reason = reason

    def _require_connection(self) -> Any:
        if self._js is None or not self._nc.is_connected:
            state = self.stats.reason if self.stats.reason != "up" else "down"
            detail = self.stats.last_error or "connecting"
            raise JetStreamError(
                f"not connected to NATS {', '.join(self.cfg.servers)}: {detail}", state
            )
        return self._js

    async def _publish(self, items: list[Outgoing]) -> int:
        js = self._require_connection()
        if not self._stream_checked:
            try:
                await ensure_stream(js, self.cfg)
            except Exception as exc:
                raise self._failure(exc, 0) from None
            self._stream_checked = True
        fresh = 0
        for start in range(0, len(items), MAX_IN_FLIGHT):
            chunk = items[start : start + MAX_IN_FLIGHT]
            # Sent back to back in order (each task writes before its first await), the
            # acks awaited together: one round trip per chunk, not per message.
            acks = await asyncio.gather(
                *(self._publish_one(js, item) for item in chunk), return_exceptions=True
            )
            for i, ack in enumerate(acks):
                if isinstance(ack, BaseException):
                    self.stats.failures += 1
                    raise self._failure(ack, start + i)
                self.stats.published += 1
                if ack.duplicate:
                    self.stats.duplicates += 1
                else:
                    fresh += 1
        return fresh

    async def _publish_one(self, js: Any, item: Outgoing) -> Any:
        headers = {MSG_ID: item.msg_id, **(item.headers or {})}
        return await js.publish(
            item.subject, item.payload, timeout=self.cfg.ack_timeout_s, headers=headers
        )

    def _failure(self, exc: BaseException, done: int) -> JetStreamError:
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            if self._nc is not None and self._nc.is_connected:
                self._stream_checked = False  # maybe deleted: check (and create) it again
                return JetStreamError(
                    f"no JetStream stream captures the subject (expected {self.cfg.stream} "
                    f"over {self.cfg.subject_prefix}.>; create it or set create_stream)",
                    "no_stream",
                    done,
                )
            return JetStreamError(f"NATS link down: {self.stats.last_error}", "down", done)
        if isinstance(exc, nats.errors.NoRespondersError):
            return JetStreamError(
                "nothing answers JetStream requests on this NATS server "
                "(is JetStream enabled: nats-server -js?)",
                "no_stream",
                done,
            )
        if isinstance(exc, nats.errors.MaxPayloadError):
            return JetStreamError(f"too large for this NATS server: {exc}", "rejected", done)
        if isinstance(exc, nats.js.errors.APIError):
            code = exc.code or 0
            if 400 <= code < 500 and code not in (408, 429):
                # The server answered and said no (limits, permissions, a sealed
                # stream): the same message would be refused again.
                return JetStreamError(f"JetStream refused the message: {exc}", "rejected", done)
            # 503 and the like: JetStream recovering after a restart, or no quorum yet.
            return JetStreamError(f"JetStream unavailable: {exc}", "down", done)
        if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
            return JetStreamError(
                f"no JetStream ack within {self.cfg.ack_timeout_s:g} s "
                f"({self.stats.last_error or 'server slow or link cut'})",
                "timeout",
                done,
            )
        return JetStreamError(describe(exc), classify(exc), done)

    async def _close(self) -> None:
        self._closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()  # still trying its first connection
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), CLOSE_TIMEOUT_S)
