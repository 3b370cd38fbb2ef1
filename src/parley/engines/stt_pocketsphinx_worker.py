"""A PocketSphinx decoder in a process of its own: `python -m parley.engines.stt_pocketsphinx_worker`.

Started by `stt_pocketsphinx_pool`; it talks only through pipes, in frames of a one-byte kind,
a four-byte big-endian length and the payload (`read_frame`, `write_frame`, used by both ends).

* stdin, parent to worker: `C` the decoder configuration (JSON, first and once), then `D` a
  decode request (a four-byte turn number, then int16 little-endian samples).  End of file: exit.
* stdout, worker to parent: `R` ready or `E` an error (JSON `{"code", "message"}`) for `C`;
  for each `D` exactly one `T` (the transcript, UTF-8) or `E`.
* the abort pipe (its descriptor number is the one argument): four-byte turn numbers written by
  the parent when a turn is cancelled.  It is checked between one-second slices of audio; an
  abort naming another turn (one that already finished) is ignored.

The worker writes its frames to a copy of stdout and points descriptor 1 at stderr, so nothing
the C library prints can break a frame.  It ignores SIGINT: Ctrl-C in a terminal reaches the
whole process group, and the server, not the worker, decides when decoding stops.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
from typing import Any

from parley.engines.errors import EngineError

SLICE_BYTES = 2 * 16000  # one second of audio between checks of the abort pipe
_HEADER = struct.Struct(">cI")
TURN = struct.Struct(">I")


def write_frame(fd: int, kind: bytes, payload: bytes = b"") -> None:
    data = memoryview(_HEADER.pack(kind, len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def read_frame(fd: int) -> tuple[bytes, bytes]:
    """The next frame; `EOFError` when the other end has closed (or died)."""
    kind, size = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return kind, _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def make_decoder(paths: dict[str, str | None], options: dict[str, Any]) -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise EngineError("pocketsphinx is not installed (pip install pocketsphinx)",
                          code="engine_unavailable") from exc  # fmt: skip
    missing = [f"{key}={path}" for key, path in paths.items() if path and not os.path.exists(path)]
    if missing:
        raise EngineError(f"pocketsphinx model files not found: {', '.join(missing)}", code="model_not_found")
    options = {"loglevel": "FATAL", **options, **{key: path for key, path in paths.items() if path}}
    try:
        return pocketsphinx.Decoder(**options)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise EngineError(f"pocketsphinx could not load its model: {exc}", code="engine_unavailable") from exc


def _aborted(abort_fd: int, turn: bytes) -> bool:
    """Has the parent asked to abort `turn`?  Reads every abort waiting in the pipe."""
    found = False
    while select.select([abort_fd], [], [], 0)[0]:
        data = os.read(abort_fd, 4096)
        if not data:  # the parent is gone
            return True
        found = found or any(data[i : i + 4] == turn for i in range(0, len(data) - 3, 4))
    return found


def _decode(decoder: Any, audio: bytes, turn: bytes, abort_fd: int) -> str:
    """The hypothesis for `audio` ("" when aborted)."""
    aborted = False
    decoder.start_utt()
    try:
        for start in range(0, len(audio), SLICE_BYTES):
            aborted = _aborted(abort_fd, turn)
            if aborted:
                break
            decoder.process_raw(audio[start : start + SLICE_BYTES], full_utt=False)
    finally:
        decoder.end_utt()
    hyp = None if aborted else decoder.hyp()
    return " ".join((hyp.hypstr if hyp is not None else "").split())


def _error(out: int, code: str, message: str) -> None:
    write_frame(out, b"E", json.dumps({"code": code, "message": message}).encode())


def serve(inp: int, out: int, abort_fd: int) -> None:
    """Answer frames on `inp` until it closes."""
    kind, payload = read_frame(inp)
    assert kind == b"C", kind
    config = json.loads(payload)
    try:
        decoder = make_decoder(config["paths"], config["options"])
    except EngineError as exc:
        _error(out, exc.code, exc.message)
        return
    write_frame(out, b"R")
    while True:
        try:
            kind, payload = read_frame(inp)
        except EOFError:
            return
        assert kind == b"D", kind
        try:
            text = _decode(decoder, payload[4:], payload[:4], abort_fd)
        except (RuntimeError, ValueError) as exc:
            _error(out, "stt_error", f"pocketsphinx failed: {exc}")
            continue
        write_frame(out, b"T", text.encode())


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)
    try:
        serve(0, out, int(sys.argv[1]))
    except (EOFError, BrokenPipeError):  # the parent closed its end or died
        pass


if __name__ == "__main__":
    main()
