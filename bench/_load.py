"""Simulated callers: N raw `websockets` clients streaming test speech at real-time pace.

Every caller streams one 20 ms PCM16 chunk every 20 ms for the whole run, as a microphone or a
phone bridge does: silence, then a spoken sentence, then silence while it waits for the answer,
and so on.  One ticker task paces all callers (caller i sends in sub-slot i % 4 of each 20 ms,
so sends are spread over time as unsynchronised calls would be); the messages are JSON encoded
once, before the run, so the load generator spends its time on sockets, not on base64.

What a caller does between sentences is a `Script`:
* `Conversation`: speak, wait for the answer's `response.done`, pause, speak again.
* `BargeIn`: speak, wait for the answer's first audio, wait a little more, then speak over it.

Times are `time.perf_counter()` in this process.  `sent_at[k]` is when chunk k (audio
[20k, 20k+20) ms of the caller's stream) left; chunk k is due at start + phase + 20(k+1) ms,
i.e. once it has been "recorded".  The audio clock of the server's VAD runs on the same audio,
resampled to 16 kHz, so `decision_chunk(ms)` is the chunk whose arrival let the VAD reach
`ms` on its clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _common import API_KEY

CHUNK_MS = 20
# callers send in PHASES sub-slots of each 20 ms (caller i in slot i % PHASES); more phases
# spread the arrivals more evenly (BENCH_PHASES=20: 1 ms apart), which leaves fewer windows for
# the server's VAD batcher to share a model call
PHASES = int(os.environ.get("BENCH_PHASES", "4"))
RATE = 24000
SAMPLES = RATE * CHUNK_MS // 1000
_DELTA_PREFIX = '"type":"response.output_audio.delta"'
_RESPONSE_ID = re.compile(r'"response_id":"([^"]+)"')


def append_message(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()},
                      separators=(",", ":"))


@dataclass(frozen=True)
class Clip:
    """A sentence as pre-encoded append messages, one per 20 ms, and where its speech is."""

    messages: tuple[str, ...]
    speech_start_ms: float
    speech_end_ms: float

    @classmethod
    def make(cls, text: str = "turn off the lights in the kitchen") -> Clip:
        from tests.support.speech import make_speech

        speech = make_speech(text, lead_ms=0, tail_ms=0, rate=RATE)
        pcm = speech.pcm
        pad = (-pcm.size) % SAMPLES  # whole chunks: pad with silence
        data = np.concatenate((pcm, np.zeros(pad, np.int16))).astype("<i2").tobytes()
        step = 2 * SAMPLES
        messages = tuple(append_message(data[i:i + step]) for i in range(0, len(data), step))
        return cls(messages, speech.speech_start_ms, speech.speech_end_ms)


SILENCE = append_message(bytes(2 * SAMPLES))


class VadClock:
    """Chunk index -> 16 kHz samples the server's resampler has produced by then (the same
    resampler, at the same soxr quality, as the server's VAD path)."""

    def __init__(self, chunks: int) -> None:
        from parley.audio.resample import StreamResampler
        from parley.runtime import listening

        rs = StreamResampler(RATE, 16000, quality=getattr(listening, "VAD_RESAMPLE_QUALITY", "QQ"))
        zero = np.zeros(SAMPLES, np.int16)
        self.cum = np.cumsum([rs.push(zero).size for _ in range(chunks)])

    def decision_chunk(self, clock_ms: float) -> int:
        """The first chunk after which the VAD had audio up to `clock_ms` on its clock."""
        return int(np.searchsorted(self.cum, clock_ms * 16, side="left"))


@dataclass
class Turn:
    start_chunk: int  # first chunk of the spoken clip
    speech_start_ms: float  # true speech bounds on the caller's stream clock
    speech_end_ms: float
    barge_in: bool = False
    started_at: float | None = None  # speech_started received
    audio_start_ms: int | None = None
    stopped_at: float | None = None  # speech_stopped received
    audio_end_ms: int | None = None
    response_id: str | None = None  # the response this turn's speech triggered
    first_audio_at: float | None = None
    done_at: float | None = None
    status: str | None = None
    # barge-in: what happened to the response that was speaking when this turn began
    interrupted_id: str | None = None
    interrupted_done_at: float | None = None
    interrupted_status: str | None = None
    interrupted_last_audio_at: float | None = None
    interrupted_audio_after_start: int = 0  # its deltas received after speech_started
    times: dict[str, float] = field(default_factory=dict)  # first arrival of each event type
    transcript: str | None = None


@dataclass
class Caller:
    index: int
    script: Script
    clip: Clip
    phase: int
    ws: Any = None
    sent_at: list[float] = field(default_factory=list)
    queue: deque[str] = field(default_factory=deque)
    turns: list[Turn] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    last_audio_at: dict[str, float] = field(default_factory=dict)  # response id -> last delta
    audio_ms: dict[str, float] = field(default_factory=dict)  # response id -> audio received (approx.)
    current_response: str | None = None
    done: bool = False
    closed: bool = False

    @property
    def chunks_sent(self) -> int:
        return len(self.sent_at)

    def speak(self, barge_in: bool = False) -> Turn:
        k = self.chunks_sent
        turn = Turn(k, k * CHUNK_MS + self.clip.speech_start_ms, k * CHUNK_MS + self.clip.speech_end_ms, barge_in)
        if barge_in:
            turn.interrupted_id = self.current_response
        self.turns.append(turn)
        self.queue.extend(self.clip.messages)
        return turn

    def next_message(self) -> str:
        self.script.tick(self)
        return self.queue.popleft() if self.queue else SILENCE

    def on_message(self, msg: str, now: float) -> None:
        head = msg[:120]
        if _DELTA_PREFIX in head:
            m = _RESPONSE_ID.search(msg, 0, 300)
            rid = m.group(1) if m else None
            if rid:
                self.last_audio_at[rid] = now
                # ~170 characters of the event are not audio; base64 of PCM16 24 kHz is 64 chars/ms
                self.audio_ms[rid] = self.audio_ms.get(rid, 0.0) + max(0, len(msg) - 170) / 64
                turn = self._turn_of(rid)
                if turn is not None and turn.first_audio_at is None:
                    turn.first_audio_at = now
                for t in self.turns:
                    if t.interrupted_id == rid and t.started_at is not None:
                        t.interrupted_audio_after_start += 1
            self.script.on_event(self, "response.output_audio.delta", None, now)
            return
        ev = json.loads(msg)
        kind = ev.get("type")
        turn = self.turns[-1] if self.turns else None
        if turn is not None:
            turn.times.setdefault(kind, now)
            if kind == "conversation.item.input_audio_transcription.completed":
                turn.transcript = ev.get("transcript")
        if kind == "input_audio_buffer.speech_started" and turn is not None and turn.started_at is None:
            turn.started_at, turn.audio_start_ms = now, ev["audio_start_ms"]
        elif kind == "input_audio_buffer.speech_stopped" and turn is not None and turn.stopped_at is None:
            turn.stopped_at, turn.audio_end_ms = now, ev["audio_end_ms"]
        elif kind == "response.created":
            rid = ev["response"]["id"]
            self.current_response = rid
            if turn is not None and turn.stopped_at is not None and turn.response_id is None:
                turn.response_id = rid
        elif kind == "response.done":
            rid, status = ev["response"]["id"], ev["response"]["status"]
            if rid == self.current_response:
                self.current_response = None
            owner = self._turn_of(rid)
            if owner is not None:
                owner.done_at, owner.status = now, status
            for t in self.turns:
                if t.interrupted_id == rid:
                    t.interrupted_done_at, t.interrupted_status = now, status
                    t.interrupted_last_audio_at = self.last_audio_at.get(rid)
        elif kind == "error":
            self.errors.append(ev.get("error", {}))
        self.script.on_event(self, kind, ev, now)

    def _turn_of(self, rid: str) -> Turn | None:
        for t in reversed(self.turns):
            if t.response_id == rid:
                return t
        return None


class Script:
    def tick(self, caller: Caller) -> None: ...

    def on_event(self, caller: Caller, kind: str, ev: dict[str, Any] | None, now: float) -> None: ...


class Conversation(Script):
    """Lead silence, then `turns` times: speak, wait for response.done (at most `wait_s`) and
    for the answer's audio to have played (the server sends it faster than real time; a caller
    listens at real time), pause `pause_s` (random in the range), speak again."""

    def __init__(self, turns: int, lead_s: tuple[float, float], pause_s: tuple[float, float] = (0.5, 1.5),
                 wait_s: float = 15.0, rng: random.Random | None = None) -> None:
        self.turns, self.lead_s, self.pause_s, self.wait_s = turns, lead_s, pause_s, wait_s
        self.rng = rng or random.Random(0)
        self.speak_at: dict[int, int] = {}  # caller -> chunk index of the next turn
        self.waiting: dict[int, int] = {}  # caller -> chunk index when waiting gives up

    def tick(self, caller: Caller) -> None:
        k = caller.chunks_sent
        if caller.done or caller.queue:
            return
        if caller.index not in self.speak_at and caller.index not in self.waiting:
            if not caller.turns:
                self.speak_at[caller.index] = k + _chunks(self.rng.uniform(*self.lead_s))
            else:
                return
        if caller.index in self.waiting:
            if k >= self.waiting[caller.index]:  # no answer in time: give up on this turn
                del self.waiting[caller.index]
                self._next(caller, k)
            return
        if k >= self.speak_at[caller.index]:
            del self.speak_at[caller.index]
            caller.speak()
            self.waiting[caller.index] = k + len(caller.clip.messages) + _chunks(self.wait_s)

    def on_event(self, caller: Caller, kind: str, ev: dict[str, Any] | None, now: float) -> None:
        if kind == "response.done" and caller.index in self.waiting and not caller.queue:
            turn = caller.turns[-1]
            if ev is not None and ev["response"]["id"] == turn.response_id:
                del self.waiting[caller.index]
                playing = 0.0
                if turn.first_audio_at is not None:
                    playing = max(0.0, turn.first_audio_at + caller.audio_ms.get(turn.response_id, 0) / 1000 - now)
                self._next(caller, caller.chunks_sent, playing)

    def _next(self, caller: Caller, k: int, playing_s: float = 0.0) -> None:
        if len(caller.turns) >= self.turns:
            caller.done = True
        else:
            self.speak_at[caller.index] = k + _chunks(playing_s + self.rng.uniform(*self.pause_s))


class BargeIn(Script):
    """Speak; when the answer's first audio arrives, wait `delay_s` (random in the range) and
    speak again over it, `barges` times; then wait for the last answer."""

    def __init__(self, barges: int, lead_s: tuple[float, float], delay_s: tuple[float, float] = (0.2, 1.0),
                 wait_s: float = 15.0, rng: random.Random | None = None) -> None:
        self.barges, self.lead_s, self.delay_s, self.wait_s = barges, lead_s, delay_s, wait_s
        self.rng = rng or random.Random(0)
        self.speak_at: dict[int, int] = {}
        self.give_up: dict[int, int] = {}

    def tick(self, caller: Caller) -> None:
        k = caller.chunks_sent
        if caller.done or caller.queue:
            return
        if not caller.turns and caller.index not in self.speak_at:
            self.speak_at[caller.index] = k + _chunks(self.rng.uniform(*self.lead_s))
        at = self.speak_at.get(caller.index)
        if at is not None and k >= at:
            del self.speak_at[caller.index]
            turn = caller.speak(barge_in=bool(caller.turns))
            if turn.barge_in and turn.interrupted_id is None:
                turn.barge_in = False  # the answer had already finished: not a barge-in
            self.give_up[caller.index] = k + len(caller.clip.messages) + _chunks(self.wait_s)
        elif caller.index in self.give_up and k >= self.give_up[caller.index]:
            caller.done = True

    def on_event(self, caller: Caller, kind: str, ev: dict[str, Any] | None, now: float) -> None:
        if not caller.turns or caller.done:
            return
        turn = caller.turns[-1]
        if kind == "response.output_audio.delta" and turn.first_audio_at is not None \
                and caller.index not in self.speak_at and not caller.queue and turn.response_id is not None \
                and caller.current_response == turn.response_id:
            barges = sum(t.barge_in for t in caller.turns)
            if barges < self.barges and len(caller.turns) < 3 * self.barges:
                self.speak_at[caller.index] = caller.chunks_sent + _chunks(self.rng.uniform(*self.delay_s))
                self.give_up.pop(caller.index, None)
        elif kind == "response.done" and ev is not None and ev["response"]["id"] == turn.response_id:
            if caller.index not in self.speak_at:
                barges = sum(t.barge_in for t in caller.turns)
                if barges >= self.barges or len(caller.turns) >= 3 * self.barges:
                    caller.done = True
                else:  # it finished before we spoke over it: try again with a new turn
                    self.speak_at[caller.index] = caller.chunks_sent + _chunks(0.3)


def _chunks(seconds: float) -> int:
    return max(0, round(seconds * 1000 / CHUNK_MS))


class LagProbe:
    """This process's event-loop lag (the load generator's own health)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(1000 * max(0.0, time.perf_counter() - began - 0.005))


async def connect(caller: Caller, url: str, session: dict[str, Any], deflate: bool) -> None:
    from websockets.asyncio.client import connect as ws_connect

    caller.ws = await ws_connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"},
                                 compression="deflate" if deflate else None, max_size=None,
                                 ping_interval=None, open_timeout=60, close_timeout=2,
                                 write_limit=2**24)  # never wait on a slow server: keep real-time pace
    await caller.ws.send(json.dumps({"type": "session.update", "session": session}))
    while True:
        ev = json.loads(await asyncio.wait_for(caller.ws.recv(), 30))
        if ev["type"] == "session.updated":
            return
        if ev["type"] == "error":
            raise RuntimeError(f"session.update refused: {ev['error']}")


async def reader(caller: Caller) -> None:
    try:
        async for msg in caller.ws:
            try:
                caller.on_message(msg, time.perf_counter())
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the reader
                caller.errors.append({"client": repr(exc)})
    except Exception:  # noqa: BLE001 - a closed connection ends the reader
        pass
    finally:
        caller.closed = True


def voice_session(silence_ms: int = 500, padding_ms: int = 300, create_response: bool = True) -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": RATE}
    return {"type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": pcm,
                                "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                   "silence_duration_ms": silence_ms, "prefix_padding_ms": padding_ms,
                                                   "create_response": create_response, "interrupt_response": True}},
                      "output": {"format": pcm, "voice": "alloy"}}}


@dataclass
class RunResult:
    callers: list[Caller]
    started: float  # ticker start
    ended: float
    client_lag_ms: list[float]
    connect_failures: int
    timed_out: bool


async def run_callers(url: str, n: int, make_script: Any, clip: Clip, *, budget_s: float,
                      session: dict[str, Any] | None = None, deflate: bool = False,
                      on_steady: Any = None, before_close: Any = None,
                      connect_concurrency: int = 25) -> RunResult:
    """Connect `n` callers, stream until every script is done or `budget_s` passes; return them.
    `on_steady(t)` (optional, sync) is called once every caller is connected and streaming;
    `before_close()` (optional, sync) once the streaming has ended, before the callers hang up."""
    session = session or voice_session()
    callers = [Caller(i, make_script(i), clip, i % PHASES) for i in range(n)]
    sem = asyncio.Semaphore(connect_concurrency)

    async def open_one(c: Caller) -> bool:
        async with sem:
            try:
                await connect(c, url, session, deflate)
                return True
            except Exception as exc:  # noqa: BLE001
                c.errors.append({"connect": repr(exc)})
                return False

    ok = await asyncio.gather(*(open_one(c) for c in callers))
    live = [c for c, good in zip(callers, ok) if good]
    readers = [asyncio.create_task(reader(c)) for c in live]
    stop = asyncio.Event()
    probe = LagProbe()
    probe_task = asyncio.create_task(probe.run(stop))
    by_phase = [[c for c in live if c.phase == p] for p in range(PHASES)]
    slot_s = CHUNK_MS / 1000 / PHASES
    start = time.perf_counter() + 0.05
    deadline = start + budget_s
    slot, timed_out = 0, False
    if on_steady is not None:
        on_steady(start)
    while True:
        due = start + (slot + 1) * slot_s
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        for c in by_phase[slot % PHASES]:
            if c.closed:
                continue
            msg = c.next_message()
            try:
                await c.ws.send(msg)
            except Exception as exc:  # noqa: BLE001
                c.errors.append({"send": repr(exc)})
                c.closed = True
                continue
            c.sent_at.append(time.perf_counter())
        slot += 1
        if slot % PHASES == 0:
            if all(c.done or c.closed for c in live):
                break
            if time.perf_counter() > deadline:
                timed_out = True
                break
    ended = time.perf_counter()
    await asyncio.sleep(0.3)  # late events
    if before_close is not None:
        before_close()
    stop.set()
    await probe_task
    for c in live:
        try:
            await asyncio.wait_for(c.ws.close(), 3)
        except Exception:  # noqa: BLE001
            pass
    for r in readers:
        r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return RunResult(callers, start, ended, probe.samples, n - len(live), timed_out)


def turn_metrics(result: RunResult, vad: VadClock, *, silence_ms: float, engines_ms: float,
                 padding_ms: float = 300) -> dict[str, list[float]]:
    """Per-turn measures, in ms (see latency.py for what each means)."""
    out: dict[str, list[float]] = {k: [] for k in (
        "added_ms", "server_added_ms", "vad_end_delay_ms", "first_audio_ms", "stop_event_lag_ms",
        "start_event_lag_ms", "vad_onset_delay_ms")}
    for c in result.callers:
        sent = c.sent_at
        for t in c.turns:
            if t.audio_end_ms is not None and t.stopped_at is not None:
                k = vad.decision_chunk(t.audio_end_ms)
                if k < len(sent):
                    out["stop_event_lag_ms"].append(1000 * (t.stopped_at - sent[k]))
                out["vad_end_delay_ms"].append(t.audio_end_ms - silence_ms - t.speech_end_ms)
                if t.first_audio_at is not None and k < len(sent):
                    out["server_added_ms"].append(1000 * (t.first_audio_at - sent[k]) - engines_ms)
                    last_speech = int(np.ceil(t.speech_end_ms / CHUNK_MS)) - 1
                    ref = sent[last_speech] + silence_ms / 1000
                    out["added_ms"].append(1000 * (t.first_audio_at - ref) - engines_ms)
                    out["first_audio_ms"].append(1000 * (t.first_audio_at - sent[last_speech]))
            if t.audio_start_ms is not None and t.started_at is not None:
                decided = t.audio_start_ms + padding_ms + 64
                k = vad.decision_chunk(decided)
                if k < len(sent):
                    out["start_event_lag_ms"].append(1000 * (t.started_at - sent[k]))
                out["vad_onset_delay_ms"].append(decided - t.speech_start_ms)
    return out


def counts(result: RunResult) -> dict[str, Any]:
    turns = [t for c in result.callers for t in c.turns]
    errors = [e for c in result.callers for e in c.errors]
    return {"callers": len(result.callers), "connect_failures": result.connect_failures,
            "turns": len(turns), "turns_detected": sum(t.stopped_at is not None for t in turns),
            "turns_answered": sum(t.first_audio_at is not None for t in turns),
            "responses_completed": sum(t.status == "completed" for t in turns),
            "errors": len(errors), "error_samples": errors[:3], "timed_out": result.timed_out,
            "chunks_sent": sum(len(c.sent_at) for c in result.callers),
            "wall_s": round(result.ended - result.started, 2)}
