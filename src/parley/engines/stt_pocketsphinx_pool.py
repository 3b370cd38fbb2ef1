"""The PocketSphinx worker processes, seen from the server: start, hand out, abort, replace, stop.

Each turn runs in one thread of a small executor (as many threads as workers), which takes an
idle worker, writes the audio and waits for the transcript; such a thread waits in `os.read`
without the GIL, so the event loop only submits the turn and awaits its future.  Nothing here is
bound to an event loop, so an engine built outside one (a test fixture, a benchmark) works in
any loop later.

Ownership keeps the threads apart: a worker is either in the idle queue or held by exactly one
turn's thread, and only that holder reads its replies, writes its requests and closes its pipes.
Other threads only signal its process (`stop`) or write to its abort pipe (four bytes,
non-blocking, under a lock that closing the pipe also takes).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.engines.errors import EngineError
from parley.engines.stt_pocketsphinx_worker import TURN, read_frame, write_frame

START_TIMEOUT_S = 30.0  # for a worker to load its decoder (~0.25 s when the machine is idle)
# A turn's answer is due within this long (pocketsphinx decodes at ~0.2x real time): a worker that
# has not answered by then is hung (a decoder stuck, a process stopped), so it is killed and
# replaced and its turn fails, instead of holding its slot for ever.
HANG_BASE_S, HANG_PER_AUDIO_S = 10.0, 2.0
_BYTES_PER_S = 2 * 16000  # int16 at 16 kHz
STOP_TIMEOUT_S = 2.0  # after SIGTERM, before SIGKILL
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `parley`


class WorkerLost(EngineError):
    """A worker died (or its replacement could not start): its turn fails, a new one is started."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="stt_error", retryable=True)


class SphinxWorker:
    """One worker slot: a process and its three pipes, restarted when the process dies."""

    def __init__(self, config: bytes) -> None:
        self._config = config
        self.hang_base_s, self.hang_per_audio_s = HANG_BASE_S, HANG_PER_AUDIO_S
        self._lock = threading.Lock()  # guards proc and stopped against stop() from another thread
        self._abort_lock = threading.Lock()  # guards _abort_w against abort() from another thread
        self._abort_w = -1
        self._stopped = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None else None

    def _start(self) -> None:
        abort_r, abort_w = os.pipe()
        os.set_blocking(abort_w, False)
        path = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        try:
            with self._lock:
                if self._stopped:
                    raise EngineError("the pocketsphinx engine is closed", code="stt_unavailable")
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "parley.engines.stt_pocketsphinx_worker", str(abort_r)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(abort_r,), bufsize=0,
                    env={**os.environ, "PYTHONPATH": path},
                )
        except BaseException:
            os.close(abort_w)
            raise
        finally:
            os.close(abort_r)
        self.ready = False
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        with self._abort_lock:
            self._abort_w = abort_w
        try:
            write_frame(self._in, b"C", self._config)
        except BrokenPipeError:
            pass  # it died at once: the handshake says so

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Read the handshake: `EngineError` (the worker's own code) if the decoder did not load."""
        if self.ready:
            return
        if timeout_s is not None and not select.select([self._out], [], [], timeout_s)[0]:
            self._end()
            raise EngineError(f"the pocketsphinx worker did not start within {timeout_s:.0f} s",
                              code="engine_unavailable")  # fmt: skip
        kind, payload = self._reply()
        if kind == b"E":
            self._end()
            raise EngineError(**json.loads(payload))
        self.ready = True

    def transcribe(self, turn: int, audio: bytes) -> str:
        """Blocking, by the holder: decode `audio` (int16 little-endian).  `WorkerLost` if the
        process dies, after starting its replacement."""
        if self.proc is None or self.proc.poll() is not None:  # no replacement yet, or died idle
            self._restart()
        try:
            self.wait_ready()
        except WorkerLost:
            raise
        except EngineError as exc:
            self._restart()
            raise WorkerLost(f"a new pocketsphinx worker could not start: {exc.message}") from exc
        try:
            write_frame(self._in, b"D", TURN.pack(turn) + audio)
        except BrokenPipeError:
            self._lost()
        due_s = self.hang_base_s + self.hang_per_audio_s * len(audio) / _BYTES_PER_S
        if not select.select([self._out], [], [], due_s)[0]:
            self._hung(due_s)
        kind, payload = self._reply()
        if kind == b"E":
            raise EngineError(**json.loads(payload))
        return payload.decode()

    def abort(self, turn: int) -> None:
        """Any thread: ask the worker to stop `turn` at its next slice; never blocks."""
        with self._abort_lock:
            try:
                os.write(self._abort_w, TURN.pack(turn))
            except OSError:  # closed, or full (cannot happen: 4 bytes per turn)
                pass

    def _reply(self) -> tuple[bytes, bytes]:
        try:
            return read_frame(self._out)
        except EOFError:
            return self._lost()

    def _lost(self) -> Any:
        code = self._end()
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        message = f"the pocketsphinx worker (pid {self.pid}) died ({how}); this transcription is lost"
        self._restart()
        raise WorkerLost(message)

    def _hung(self, due_s: float) -> Any:
        pid = self.pid
        self._restart()  # kills it first
        raise EngineError(f"the pocketsphinx worker (pid {pid}) did not answer within {due_s:.1f} s; it was "
                          "replaced and this transcription is lost", code="stt_timeout", retryable=True)

    def _restart(self) -> None:
        self._end()
        try:
            self._start()  # it loads while the server goes on
        except (OSError, EngineError) as exc:  # tried again at the next turn
            self.proc = None
            raise WorkerLost(f"a new pocketsphinx worker could not start: {exc}") from exc

    def _end(self) -> int:
        """The holder: kill and reap the process, close its pipes; its exit status."""
        proc = self.proc
        if proc is None:
            return 0
        proc.kill()
        code = proc.wait()
        self.close_pipes()
        return code

    def stop(self) -> None:
        """Any thread: no more restarts; SIGTERM, then SIGKILL if it has not exited in time, and
        reap it.  Its holder closes its pipes (`close_pipes`)."""
        with self._lock:
            self._stopped = True
            proc = self.proc
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close_pipes(self) -> None:
        """The holder only."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
        with self._abort_lock:  # so abort() never writes to a closed (or reused) descriptor
            os.close(self._abort_w)
            self._abort_w = -1


class _Turn:
    """One transcription: which worker has it, so that cancelling it can abort it there."""

    def __init__(self, number: int, audio: bytes) -> None:
        self.number, self.audio = number, audio
        self.worker: SphinxWorker | None = None
        self.cancelled = False
        self._lock = threading.Lock()  # held for a few instructions, never across blocking I/O

    def begin(self, worker: SphinxWorker) -> bool:
        with self._lock:
            self.worker = None if self.cancelled else worker
            return self.worker is not None

    def end(self) -> None:
        with self._lock:
            self.worker = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self.worker is not None:
                self.worker.abort(self.number)


class SphinxPool:
    """`size` workers with the decoder `config` (`{"paths": ..., "options": ...}`).  Blocks until
    all have loaded their decoders; `EngineError` if they cannot."""

    def __init__(self, config: dict[str, Any], size: int) -> None:
        if size < 1:
            raise EngineError(f"pocketsphinx needs at least one worker, not {size}", code="engine_unavailable")
        encoded = json.dumps(config).encode()
        self._workers = [SphinxWorker(encoded) for _ in range(size)]  # they load in parallel
        try:
            for worker in self._workers:
                worker.wait_ready(START_TIMEOUT_S)
        except BaseException:
            for worker in self._workers:
                worker.stop()
                worker.close_pipes()
            raise
        self._idle: queue.SimpleQueue[SphinxWorker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._lock = threading.Lock()  # orders close() against workers coming back
        self._closed = False
        self._turns = itertools.count(1)
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="pocketsphinx")

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (a worker being replaced may be missing)."""
        return [pid for pid in (worker.pid for worker in self._workers) if pid is not None]

    async def transcribe(self, audio: bytes) -> str:
        """The transcript of `audio`; cancelling stops the wait at once and the worker at its
        next one-second slice."""
        turn = _Turn(next(self._turns), audio)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, turn)
        except RuntimeError as exc:  # the executor is shut down
            raise EngineError("the pocketsphinx engine is closed", code="stt_unavailable") from exc
        try:
            return await future
        except asyncio.CancelledError:
            turn.cancel()
            raise

    def _run(self, turn: _Turn) -> str:
        """In an executor thread: one turn on one worker (there is always an idle one, as there
        are as many threads as workers)."""
        worker = self._idle.get()
        try:
            if not turn.begin(worker):
                return ""  # cancelled while queued
            try:
                text = worker.transcribe(turn.number, turn.audio)
            finally:
                turn.end()
        except WorkerLost:
            self._check_open()  # stopped by close(), not lost
            raise
        finally:
            self._give_back(worker)
        self._check_open()
        return text

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the pocketsphinx engine closed during the transcription", code="stt_unavailable")

    def _give_back(self, worker: SphinxWorker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.put(worker)
                return
        worker.close_pipes()  # close() has stopped it

    def close(self) -> None:
        """Blocking: stop every worker and reap it.  Turns still running fail."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        for worker in self._workers:
            worker.stop()
        while True:
            try:
                self._idle.get_nowait().close_pipes()
            except queue.Empty:
                break
