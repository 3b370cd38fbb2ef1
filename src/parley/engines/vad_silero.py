"""Silero VAD on onnxruntime, with numpy only (no torch).

The model ships inside Parley (`parley/engines/models/silero_vad.onnx`, Silero VAD v6 from the
`silero-vad` 6.2.3 wheel, MIT licence beside it as `silero_vad.LICENSE`), so a plain
`pip install parley` has a working VAD: the `silero-vad` package itself cannot be a dependency,
since its own dependencies pull torch and several GB of CUDA packages.  An explicit
`model_path` (settings: `PARLEY_VAD_MODEL`) is used instead when given.

The model decides on windows of 512 samples at 16 kHz (256 at 8 kHz), 32 ms each.  Every call
gets the window plus the last 64 (32) samples of the previous one as context, and an LSTM
state of shape [2, 1, 128] that it returns updated; both are per stream, so each session
has its own `SileroStream`.  The `InferenceSession` holds only the weights and is shared by
every stream of the process (onnxruntime's `run` is thread-safe); it runs on one thread per
call, which is fastest for inputs this small (about 110 µs per window).

Most of that is the cost of a call, not of a window: the graph takes a batch (input
`[B, 576]`, state `[2, B, 128]`, rows independent), and one call for 32 streams' windows costs
about 55 µs per window.  `SileroVAD.step(streams)` makes such a call for the next waiting
window of each stream (`SileroStream.feed` buffers audio without deciding); the probabilities
are the same as each stream's alone (tests/unit/test_vad_batch.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parley.engines.errors import EngineError

__all__ = ["SileroStream", "SileroVAD", "default_model_path"]

_MODEL_FILE = "silero_vad.onnx"
_INSTALL = "pip install --force-reinstall parley"
_INPUTS = frozenset({"input", "state", "sr"})
_STATE_SHAPE = (2, 1, 128)
#: sample rate -> (window samples, context samples), as the model was trained.
_GEOMETRY: dict[int, tuple[int, int]] = {16000: (512, 64), 8000: (256, 32)}

_sessions: dict[Path, Any] = {}
_sessions_lock = threading.Lock()


def default_model_path() -> Path:
    """The ONNX model shipped in Parley's package data."""
    path = Path(__file__).with_name("models") / _MODEL_FILE
    if not path.is_file():
        raise EngineError(
            f"Silero VAD model not found at {path}: this Parley install is incomplete; reinstall it "
            f"({_INSTALL}), or set PARLEY_VAD_MODEL to a silero_vad.onnx file",
            code="vad_unavailable",
        )
    return path


def _load_session(path: Path) -> Any:
    """The process-wide InferenceSession for `path`, created on first use."""
    with _sessions_lock:
        session = _sessions.get(path)
        if session is None:
            session = _sessions[path] = _new_session(path)
        return session


def _new_session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineError(f"Silero VAD needs onnxruntime (pip install 'onnxruntime>=1.17,<2'): {exc}", code="vad_unavailable") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise EngineError(
            f"cannot load the Silero VAD model {path} (PARLEY_VAD_MODEL): {exc}", code="vad_unavailable"
        ) from exc
    names = {i.name for i in session.get_inputs()}
    if not _INPUTS <= names:
        raise EngineError(
            f"{path} is not a Silero VAD v5+ model: its inputs are {sorted(names)}, "
            f"expected {sorted(_INPUTS)}; point PARLEY_VAD_MODEL at a silero_vad.onnx file",
            code="vad_unavailable",
        )
    return session


class SileroVAD:
    """The Silero VAD engine: `stream()` gives each session its own state."""

    name = "silero"

    def __init__(self, model_path: str | Path | None = None, *, sample_rate: int = 16000) -> None:
        if sample_rate not in _GEOMETRY:
            raise ValueError(f"Silero VAD runs at {sorted(_GEOMETRY)} Hz, not {sample_rate}")
        if model_path is None:
            path = default_model_path()
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise EngineError(
                    f"Silero VAD model file not found: {path} (PARLEY_VAD_MODEL)", code="vad_unavailable"
                )
        self.model_path = path.resolve()
        self.sample_rate = sample_rate

    #: the rates the model decides at natively; the runtime feeds 8 kHz telephone audio as it is
    rates = tuple(sorted(_GEOMETRY))

    def stream(self, sample_rate: int | None = None) -> SileroStream:
        """A new stream at `sample_rate` (default: the engine's); the first one loads the model
        (a few milliseconds)."""
        rate = sample_rate or self.sample_rate
        if rate not in _GEOMETRY:
            raise ValueError(f"Silero VAD runs at {sorted(_GEOMETRY)} Hz, not {rate}")
        return SileroStream(_load_session(self.model_path), rate)

    def step(self, streams: Sequence[SileroStream]) -> list[float]:
        """The next waiting window of each stream, in one onnxruntime call (see the module doc);
        the streams must be distinct, of this engine, at one rate, and each have a window waiting."""
        if not streams:
            return []
        session, rate = streams[0]._session, streams[0].sample_rate
        for s in streams:
            if s._session is not session or s.sample_rate != rate:
                raise ValueError("step() takes streams of one engine (same model and sample rate)")
            if not s.waiting:
                raise ValueError("step() takes streams that have a whole window waiting")
        if len(set(map(id, streams))) != len(streams):
            raise ValueError("step() decides one window per stream: a stream appears twice")
        return _run(session, streams)


def _run(session: Any, streams: Sequence[SileroStream]) -> list[float]:
    """One model call: row i is the next window of streams[i], with its context and state."""
    first = streams[0]
    ctx, n = first._context_samples, first.window_samples
    x = np.empty((len(streams), ctx + n), dtype=np.float32)
    for i, s in enumerate(streams):
        row = x[i]
        row[:ctx] = s._context
        np.multiply(s._take(), 1.0 / 32768.0, out=row[ctx:], casting="unsafe")
    if len(streams) == 1:
        state = first._state if first._state.flags.c_contiguous else np.ascontiguousarray(first._state)
    else:
        state = np.concatenate([s._state for s in streams], axis=1)
    try:
        out, new_state = session.run(None, {"input": x, "state": state, "sr": first._sr})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise EngineError(f"Silero VAD inference failed: {exc}", code="vad_failed") from exc
    for i, s in enumerate(streams):
        s._context = x[i, -ctx:]  # this window's tail is the next one's context
        s._state = new_state[:, i : i + 1]
    return out[:, 0].tolist()


class SileroStream:
    """One session's VAD state: feed int16 audio, get one probability per 32 ms window."""

    def __init__(self, session: Any, sample_rate: int) -> None:
        self._session = session
        self.sample_rate = sample_rate
        self.window_samples, self._context_samples = _GEOMETRY[sample_rate]
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far, as if the stream were new."""
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(self._context_samples, dtype=np.float32)
        self._buffer = np.zeros(0, dtype=np.int16)  # audio not decided yet, from `_offset` on
        self._offset = 0

    @property
    def waiting(self) -> int:
        """Whole windows buffered and not decided yet."""
        return (self._buffer.size - self._offset) // self.window_samples

    def feed(self, pcm: np.ndarray) -> int:
        """Buffer int16 mono audio at `sample_rate`; returns the whole windows now waiting
        (decided by `process` or by the engine's `step`)."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"expected mono (1-D) samples, got shape {pcm.shape}")
        self._buffer = np.concatenate((self._buffer[self._offset :], pcm))
        self._offset = 0
        return self.waiting

    def process(self, pcm: np.ndarray) -> list[float]:
        """int16 mono at `sample_rate`; one speech probability per completed window, the
        remainder kept for the next call."""
        self.feed(pcm)
        return [_run(self._session, (self,))[0] for _ in range(self.waiting)]

    def _take(self) -> np.ndarray:
        """The next waiting window's samples."""
        start = self._offset
        self._offset = start + self.window_samples
        return self._buffer[start : self._offset]
