"""Coverage-guided fuzzing of envelope decoding (atheris / libFuzzer).

    .venv/bin/python tests/fuzz/fuzz_wire.py -runs=500000
    .venv/bin/python tests/fuzz/fuzz_wire.py -max_total_time=600 corpus_dir/

Every input either decodes or raises DecodeError; an accepted message must survive
everything a service may do with it (measure, copy, convert), and the header decoding
read from the words must be what pycapnp reads. The structure check's compiled walk
(daemoneye._wirecheck, where built) must refuse what its Python walk refuses, for the
same reason. The detector's compiled event reader (daemoneye._wireread, where built)
must read an accepted event message to pycapnp's values, or leave it to pycapnp; never
read values from one pycapnp refuses. Any other exception, a differing header, verdict
or value, an abort or a hang is a finding (libFuzzer saves the input as crash-*).
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from daemoneye import wire, wirecheck, wireread

# what the detector reads of a ProcessEvent, both ways (imported outside the instrumented
# block: the detector's code is not what is fuzzed here)
from daemoneye.services.detector.service import _EVENT, _EVENT_SHAPE


def seeds() -> list[bytes]:
    header = wire.Header("collector@fuzz", "boot", 1, 1)
    record = {"pid": 1, "name": "sh", "cmdline": ["sh", "-c", "x"], "exePath": "/bin/sh"}
    return [
        wire.encode_envelope(header, "processEvent", {"kind": "start", "record": record}),
        wire.encode_envelope(header, "heartbeat", {"service": "s", "metrics": [{"name": "a"}]}),
        wire.encode_envelope(header, "rpcReply", wire.rpc_reply(1, result=[1], payloads=[b"x"])),
        wire.encode_envelope(header, "empty"),
        wire.encode_envelope(header, "processEventBatch", {"events": [{"record": record}] * 3}),
    ]


def refusal(walk, segments: list, budget: int) -> str | None:
    try:
        walk(segments, budget, wire.NESTING_LIMIT)
    except wirecheck.StructureError as exc:
        return str(exc)
    return None


def walks_agree(data: bytes) -> None:
    try:
        segments = [wirecheck.segment_words(v) for v in wire.split_segments(data)]
    except wire.DecodeError:
        return
    budget = wire.check_budget(len(data))
    python = refusal(wirecheck.python_check_words, segments, budget)
    compiled = refusal(wirecheck.check_words, segments, budget)
    if python != compiled:
        raise AssertionError(f"the Python walk says {python!r}, the compiled one {compiled!r}")


def readers_agree(data: bytes, env: object, kind: str) -> None:
    """The compiled event reader: pycapnp's values (repr: types, -0.0, key order), or
    None; never values where pycapnp refuses the body."""
    if kind not in ("processEvent", "processEventBatch"):
        return
    compiled = wireread.read_events(data, kind, _EVENT_SHAPE)
    if compiled is None:
        return
    try:
        body = wire.body_as(env, kind)
        events = [body] if kind == "processEvent" else list(wire.batch_events(body))
        python = [_EVENT(event) for event in events]
    except wire.DecodeError as exc:
        raise AssertionError(f"the compiled reader read a body pycapnp refuses: {exc}") from None
    if repr(compiled) != repr(python):
        raise AssertionError(f"the compiled reader read {compiled!r}, pycapnp {python!r}")


def one_input(data: bytes) -> None:
    walks_agree(data)
    try:
        env, kind, source, boot, seq = wire.decode_parts(data)
    except wire.DecodeError:
        return
    read = (str(env.body.which()), env.sourceId, env.bootId, env.seq)
    if read != (kind, source, boot, seq):
        raise AssertionError(f"header {(kind, source, boot, seq)!r} but pycapnp reads {read!r}")
    readers_agree(data, env, kind)
    _ = env.total_size
    env.as_builder().to_bytes()
    with contextlib.suppress(wire.DecodeError):
        wire.to_dict(env)


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        # No corpus directory given: mutate from well-formed messages of each kind.
        import tempfile
        from pathlib import Path

        corpus = Path(tempfile.mkdtemp(prefix="fuzz-wire-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
