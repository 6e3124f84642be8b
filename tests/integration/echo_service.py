"""A minimal real service for foundation tests: `python echo_service.py [--id ID]`.

It subscribes to `test.` topics (counting what it gets) and answers `echo` and
`received` RPCs, exercising the Service base exactly as the real services do.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, ClassVar

from daemoneye.bus import Message
from daemoneye.config import load_settings
from daemoneye.service import Request, Service, rpc


class Echo(Service):
    name: ClassVar[str] = "echo"
    subscriptions: ClassVar[tuple[str, ...]] = ("test.",)

    slow_start_s = 0.0  # --slow-start: a setup that registers early, as the collector's

    def setup(self) -> None:
        self.received: list[int] = []
        self.set_up = False
        if self.slow_start_s:
            # Registered, then busy (the collector starting its reader, its snapshot):
            # requests routed to us meanwhile queue beside the broker's reply.
            self._register("register")
            time.sleep(self.slow_start_s)
            self.reach_broker(5.0)
        self.set_up = True

    def on_message(self, msg: Message) -> None:
        self.received.append(msg.envelope.seq)

    @rpc("echo")
    def rpc_echo(self, request: Request) -> dict[str, Any]:
        return {"params": request.params, "payload": request.payload.hex()}

    @rpc("ready")
    def rpc_ready(self, request: Request) -> dict[str, Any]:
        return {"set_up": self.set_up}

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
    parser.add_argument("--slow-start", type=float, default=0.0)
    args = parser.parse_args()
    Echo.slow_start_s = args.slow_start
    raise SystemExit(Echo(load_settings(), args.id).run())
