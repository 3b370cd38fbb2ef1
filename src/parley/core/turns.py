"""Turn detection, sans I/O: speech probabilities in, start/stop decisions out.

The clock is the session's audio clock (milliseconds of input audio), so turn timing is exact
and tests need no sleeping.  The VAD model runs in the runtime and reports one speech
probability per window; this module decides when a turn starts and ends.

* `server_vad`: speech starts when `min_speech_ms` of windows reach `threshold`; it stops after
  `silence_duration_ms` below `threshold - 0.15` (hysteresis, as Silero's own iterator does).
* `semantic_vad`: the same onset; at the end it weighs *what* was said.  After a short pause the
  runtime transcribes the turn so far; if the words look finished (`looks_complete`) the turn
  ends then, otherwise it waits longer, up to the eagerness' maximum (low 8 s, medium/auto 4 s,
  high 2 s) unless speech resumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MIN_SPEECH_MS = 64  # two Silero windows: a click is not a turn
HYSTERESIS = 0.15

# eagerness -> (pause before asking the transcript, longest wait for an unfinished sentence)
SEMANTIC_WAITS_MS = {"high": (300, 2000), "medium": (500, 4000), "auto": (500, 4000), "low": (800, 8000)}
SEMANTIC_THRESHOLD = 0.5


@dataclass(frozen=True)
class SpeechStart:
    onset_ms: float  # where speech begins on the audio clock


@dataclass(frozen=True)
class SpeechStop:
    end_ms: float  # end of the turn's audio (last speech + the silence that ended it)


@dataclass(frozen=True)
class NeedTranscript:
    """Semantic VAD wants the words of the turn so far (to judge whether it is finished)."""

    turn: int


TurnEvent = SpeechStart | SpeechStop | NeedTranscript


@dataclass
class TurnDetector:
    config: dict[str, Any]
    clock_ms: float = 0.0  # end of the last window seen
    speaking: bool = False
    turn: int = 0
    _run_ms: float = 0.0  # consecutive speech while idle
    _run_start: float = 0.0
    _silence_ms: float = 0.0  # consecutive silence while speaking
    _last_speech_end: float = 0.0
    _asked: bool = False
    _verdict: bool | None = None  # semantic: does the turn so far look complete?

    @property
    def semantic(self) -> bool:
        return self.config.get("type") == "semantic_vad"

    @property
    def threshold(self) -> float:
        return SEMANTIC_THRESHOLD if self.semantic else float(self.config.get("threshold", 0.5))

    def _end_wait_ms(self) -> float:
        if not self.semantic:
            return float(self.config.get("silence_duration_ms", 200))
        short, longest = SEMANTIC_WAITS_MS[self.config.get("eagerness", "auto")]
        return short if self._verdict else longest

    def feed(self, probabilities: list[float], window_ms: float) -> list[TurnEvent]:
        out: list[TurnEvent] = []
        for p in probabilities:
            start = self.clock_ms
            self.clock_ms += window_ms
            if not self.speaking:
                if p >= self.threshold:
                    if self._run_ms == 0.0:
                        self._run_start = start
                    self._run_ms += window_ms
                    if self._run_ms >= MIN_SPEECH_MS:
                        self.speaking = True
                        self.turn += 1
                        self._silence_ms, self._asked, self._verdict = 0.0, False, None
                        self._last_speech_end = self.clock_ms
                        out.append(SpeechStart(self._run_start))
                else:
                    self._run_ms = 0.0
                continue
            if p >= self.threshold - HYSTERESIS and (p >= self.threshold or self._silence_ms == 0.0):
                self._silence_ms = 0.0
                self._last_speech_end = self.clock_ms
                self._asked, self._verdict = False, None
                continue
            self._silence_ms += window_ms
            if self.semantic and not self._asked and self._silence_ms >= SEMANTIC_WAITS_MS[
                    self.config.get("eagerness", "auto")][0]:
                self._asked = True
                out.append(NeedTranscript(self.turn))
            if self._silence_ms >= self._end_wait_ms():
                out.append(self._stop())
        return out

    def _stop(self) -> SpeechStop:
        self.speaking = False
        self._run_ms = 0.0
        return SpeechStop(self._last_speech_end + self._silence_ms)

    def transcript(self, turn: int, text: str) -> list[TurnEvent]:
        """Semantic VAD: the words of the turn so far arrived; may end the turn at once."""
        if not (self.semantic and self.speaking and turn == self.turn):
            return []
        self._verdict = looks_complete(text)
        if self._verdict and self._silence_ms >= self._end_wait_ms():
            return [self._stop()]
        return []


_UNFINISHED_ENDINGS = {
    "and", "but", "or", "so", "because", "since", "although", "though", "if", "when", "while", "then",
    "the", "a", "an", "to", "of", "for", "with", "in", "on", "at", "by", "from", "about", "into",
    "my", "your", "his", "her", "our", "their", "its", "this", "that", "these", "those",
    "is", "are", "was", "were", "am", "be", "been", "i", "we", "you", "he", "she", "they", "it's",
    "um", "uh", "er", "erm", "hmm", "like", "maybe", "also", "just", "what", "which", "who", "where",
    "can", "could", "would", "should", "will", "do", "does", "did", "have", "has", "want", "need",
}
_WORD = re.compile(r"[\w']+")


def looks_complete(text: str) -> bool:
    """A cheap judgement of whether an utterance is finished.  Terminal punctuation (from engines
    that punctuate) says yes; a trailing conjunction, preposition, article, pronoun, auxiliary or
    filler ("and", "to", "the", "my", "is", "um") says no; an empty transcript says no."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",", "-", "—")):
        return False
    if stripped[-1] in ".!?":
        return True
    words = _WORD.findall(stripped.lower())
    return bool(words) and words[-1] not in _UNFINISHED_ENDINGS
