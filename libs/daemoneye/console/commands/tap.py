"""`daemoneye tap`: print bus messages decoded, one per line (the debugging tap)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq
from rich.markup import escape

from daemoneye import formats, wire
from daemoneye.bus import Message, SocketFactory, Subscriber
from daemoneye.formats import ecs, ocsf

from ..common import add_command, console, non_negative, seconds, settings_from

SUMMARY_CHARS = 160


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "tap",
        "Subscribe to the bus and print each message decoded, one per line.",
        "  daemoneye tap\n  daemoneye tap events.process. alerts. --json\n"
        "  daemoneye tap control.health. --count 5\n"
        "  daemoneye tap events.process. alerts. --format ocsf\n",
    )
    p.add_argument("prefixes", nargs="*", metavar="TOPIC_PREFIX", help="topic prefixes (all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--format", choices=["ocsf", "ecs"],
                   help="process events and alerts as OCSF or ECS documents, one a line "
                        "(other messages are skipped)")  # fmt: skip
    p.add_argument("--count", type=non_negative, default=0, help="exit after N messages")
    p.add_argument("--timeout", type=seconds, default=0, help="exit 1 if nothing arrives in S s")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    factory = SocketFactory(settings)
    sock = factory.connect(zmq.SUB, settings.endpoint("events-out"))
    subscriber = Subscriber(sock, args.prefixes, settings.bus.max_event_bytes)
    seen = 0
    try:
        while not args.count or seen < args.count:
            msg = subscriber.recv(int(args.timeout * 1000) if args.timeout else None)
            if msg is None:
                print(f"daemoneye tap: nothing received within {args.timeout:g} s", file=sys.stderr)
                return 1
            seen += 1
            if args.format:
                for doc in as_schema(msg, args.format):
                    print(json.dumps(doc, default=str), flush=True)
            elif args.json:
                print(json.dumps(as_json(msg)), flush=True)
            else:
                console.print(human_line(msg), soft_wrap=True)
    finally:  # Ctrl-C goes on to cli.main: exit 130, like every verb
        factory.close_all(linger_ms=0)
    return 0


def as_json(msg: Message) -> dict[str, Any]:
    return {"topic": msg.topic, "envelope": wire.to_dict(msg.envelope)}


def as_schema(msg: Message, fmt: str) -> list[dict[str, Any]]:
    """OCSF Process Activity / Detection Finding, or ECS documents, of one message."""
    body = wire.to_dict(msg.envelope)["body"][msg.kind]
    if msg.kind == "processEvent":
        events = [body]
    elif msg.kind == "processEventBatch":
        events = body.get("events", [])
    elif msg.kind == "alert":
        return [formats.SCHEMAS[fmt](body)]
    else:
        return []
    convert = ocsf.process_activity if fmt == "ocsf" else ecs.process_event
    return [convert(event) for event in events]


def human_line(msg: Message) -> str:
    env = msg.envelope
    stamp = time.strftime("%H:%M:%S", time.localtime(env.sentNs / 1e9))
    millis = (env.sentNs // 1_000_000) % 1000
    body = json.dumps(wire.to_dict(msg.envelope)["body"][msg.kind], separators=(",", ":"))
    if len(body) > SUMMARY_CHARS:
        body = body[: SUMMARY_CHARS - 1] + "…"
    return (
        f"[dim]{stamp}.{millis:03d}[/dim] [cyan]{msg.topic}[/cyan] "
        f"{escape(env.sourceId)}#{env.seq} [bold]{msg.kind}[/bold] {escape(body)}"
    )
