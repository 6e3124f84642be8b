"""A minimal real service for foundation tests: `python echo_service.py [--id ID]`.

It subscribes to `test.` topics (counting what it gets) and answers `echo` and
`received` RPCs, exercising the Service base exactly as the real services do.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from daemoneye.bus import Message
from daemoneye.config import load_settings
from daemoneye.service import Request, Service, rpc


class Echo(Service):
    name: ClassVar[str] = "echo"
    subscriptions: ClassVar[tuple[str, ...]] = ("test.",)

    def setup(self) -> None:
        self.received: list[int] = []

    def on_message(self, msg: Message) -> None:
        self.received.append(msg.envelope.seq)

    @rpc("echo")
    def rpc_echo(self, request: Request) -> dict[str, Any]:
        return {"params": request.params, "payload": request.payload.hex()}

    @rpc("received")
    def rpc_received(self, request: Request) -> dict[str, Any]:
        stats = self.subscriber.stats if self.subscriber else None
        return {
            "count": len(self.received),
            "gaps": stats.gaps if stats else 0,
            "dropped": stats.dropped_malformed if stats else 0,
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--id")
    args = parser.parse_args()
    raise SystemExit(Echo(load_settings(), args.id).run())
