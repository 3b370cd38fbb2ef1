"""Split streaming LLM text into pieces worth speaking.

Text-to-speech sounds right only on whole clauses, and the first audio should not wait for the
whole reply: a piece is released as soon as a sentence ends, or at a clause break (comma,
semicolon, colon, dash) once the piece is long enough to be worth a TTS call.  The very first
piece uses a lower threshold so speech starts early.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)")


class SentenceChunker:
    def __init__(self, *, first_clause_chars: int = 24, clause_chars: int = 80, max_chars: int = 240) -> None:
        self._buf = ""
        self._first = True
        self._first_clause_chars = first_clause_chars
        self._clause_chars = clause_chars
        self._max_chars = max_chars

    def push(self, text: str) -> list[str]:
        """Add text; return the pieces that are complete."""
        self._buf += text
        pieces: list[str] = []
        while True:
            piece = self._next_piece()
            if piece is None:
                return pieces
            pieces.append(piece)

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _next_piece(self) -> str | None:
        """The earliest complete piece: a sentence end, a clause break past the threshold, or a
        space before `max_chars`, whichever comes first (so pieces do not depend on how the
        text was split into deltas).  Blank pieces are skipped."""
        while True:
            buf = self._buf
            cuts = []
            m = _SENTENCE_END.search(buf)
            if m:
                cuts.append(m.end())
            threshold = self._first_clause_chars if self._first else self._clause_chars
            for c in _CLAUSE_END.finditer(buf):
                if c.end() >= threshold:
                    cuts.append(c.end())
                    break
            if len(buf) > self._max_chars:
                space = buf.rfind(" ", 0, self._max_chars)
                cuts.append(space if space > 0 else self._max_chars)
            if not cuts:
                return None
            cut = min(cuts)
            piece, self._buf = buf[:cut].strip(), buf[cut:]
            if piece:
                self._first = False
                return piece
            if not self._buf.strip():
                return None
