"""SIP messages (RFC 3261): parse what arrives, build what we answer.  No I/O here.

Only what a user agent server for calls needs is understood: the start line, headers (with the
compact forms, folded lines and comma-separated Via values), the tags of From/To, the branch of
the top Via, CSeq, and the body by Content-Length.  Anything malformed raises `SipParseError`,
which the transport answers with 400 when it can tell where to send it (and the sender is in
`sip_allowed_networks`; from elsewhere it is dropped).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "r": "refer-to",
           "b": "referred-by", "o": "event", "u": "allow-events"}
# How names are written on the wire (the rest: Title-Case of the lower-case key).
CANONICAL = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}
MAX_MESSAGE_BYTES = 64 * 1024
SIP_VERSION = "SIP/2.0"
REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 415: "Unsupported Media Type",
           420: "Bad Extension", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
           486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error",
           503: "Service Unavailable", 600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
           606: "Not Acceptable"}

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")


class SipParseError(ValueError):
    """The bytes are not a SIP message we can make sense of."""


def header_name(name: str) -> str:
    """The lower-case long form of a header name (compact forms expanded)."""
    key = name.strip().lower()
    return COMPACT.get(key, key)


def wire_name(key: str) -> str:
    return CANONICAL.get(key, "-".join(part.capitalize() for part in key.split("-")))


@dataclass
class SipMessage:
    """A request (`method`, `uri`) or a response (`status`, `reason`), with headers in order.

    `headers` holds (lower-case long name, value) pairs; a Via line with several comma-separated
    values is split into one pair per value, so `all("via")` is the whole Via stack, top first.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        key = header_name(name)
        return next((v for k, v in self.headers if k == key), None)

    def all(self, name: str) -> list[str]:
        key = header_name(name)
        return [v for k, v in self.headers if k == key]

    def need(self, name: str) -> str:
        value = self.get(name)
        if value is None or not value.strip():
            raise SipParseError(f"missing {wire_name(header_name(name))} header")
        return value

    @property
    def call_id(self) -> str:
        return self.need("call-id").strip()

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = self.need("cseq").strip().partition(" ")
        if not _digits(number) or not _TOKEN.fullmatch(method.strip()):
            raise SipParseError("malformed CSeq header")
        return int(number), method.strip().upper()

    @property
    def branch(self) -> str:
        return param(self.need("via"), "branch") or ""

    def from_tag(self) -> str | None:
        return param(self.need("from"), "tag")

    def to_tag(self) -> str | None:
        return param(self.need("to"), "tag")

    def to_bytes(self) -> bytes:
        start = f"{self.method} {self.uri} {SIP_VERSION}" if self.is_request else \
            f"{SIP_VERSION} {self.status} {self.reason or REASONS.get(self.status or 0, 'Unknown')}"
        lines = [start]
        lines += [f"{wire_name(k)}: {v}" for k, v in self.headers if k != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def param(value: str, name: str) -> str | None:
    """A `;name=value` parameter of a header value (outside its <...> URI), or "" when it has no value."""
    tail = value.rsplit(">", 1)[1] if ">" in value else value
    for part in tail.split(";")[1:]:
        key, _, val = part.partition("=")
        if key.strip().lower() == name.lower():
            return val.strip().strip('"')
    return None


def uri_of(value: str) -> str:
    """The URI in a name-addr (`"Bob" <sip:bob@host>;tag=1`) or addr-spec (`sip:bob@host;tag=1`)."""
    if "<" in value and ">" in value:
        return value[value.index("<") + 1:value.index(">")].strip()
    return value.split(";", 1)[0].strip()


def host_port(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """The host and port of a sip:/sips: URI."""
    match = re.match(r"sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>?]+)(?::(\d+))?", uri.strip(), re.I)
    if match is None:
        raise SipParseError(f"not a SIP URI: {uri[:80]!r}")
    return match.group(1).strip("[]"), int(match.group(2) or default_port)


def split_values(value: str) -> list[str]:
    """Comma-separated header values, keeping commas inside quotes and <...>."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) at the blank line that ends the headers, or None when it has not arrived yet."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i], data[i + len(sep):]
    return None


def parse(data: bytes, *, stream: bool = False) -> tuple[SipMessage, int]:
    """Parse one message from the start of `data`; return it and how many bytes it took.

    Datagrams (`stream=False`) hold exactly one message: without Content-Length the body is the
    rest.  On a stream the body is exactly Content-Length bytes (absent means 0); raises
    `IncompleteMessage` while the message has not fully arrived.
    """
    parts = split_head(data)
    if parts is None:
        if len(data) > MAX_MESSAGE_BYTES:
            raise SipParseError("headers too large")
        if stream:
            raise IncompleteMessage
        head, rest = data.rstrip(b"\r\n"), b""
    else:
        head, rest = parts
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    msg = _start_line(lines[0].strip())
    current: list[str] | None = None
    raw: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and current is not None:
            current[1] += " " + line.strip()  # an obsolete folded continuation line
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name.strip()):
            raise SipParseError(f"malformed header line: {line[:80]!r}")
        current = [header_name(name), value.strip()]
        raw.append(current)
    for key, value in raw:
        if key == "via":
            msg.headers += [("via", v) for v in split_values(value)]
        else:
            msg.headers.append((key, value))
    length_text = msg.get("content-length")
    if length_text is not None and not _digits(length_text.strip()):
        raise SipParseError("malformed Content-Length")
    consumed_head = len(data) - len(rest)
    if length_text is None:
        length = 0 if stream else len(rest)
    else:
        length = int(length_text)
        if length > MAX_MESSAGE_BYTES:
            raise SipParseError("body too large")
        if len(rest) < length:
            if stream:
                raise IncompleteMessage
            raise SipParseError("body shorter than Content-Length")
    msg.body = rest[:length]
    return msg, consumed_head + length


class IncompleteMessage(Exception):
    """More bytes are needed (stream transports)."""


def _start_line(line: str) -> SipMessage:
    if line.startswith(SIP_VERSION + " "):
        _, code, reason = (line.split(" ", 2) + [""])[:3]
        if not (_digits(code) and len(code) == 3):
            raise SipParseError(f"malformed status line: {line[:80]!r}")
        return SipMessage(status=int(code), reason=reason)
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION or not _TOKEN.fullmatch(parts[0]) or ":" not in parts[1]:
        raise SipParseError(f"malformed request line: {line[:80]!r}")
    return SipMessage(method=parts[0].upper(), uri=parts[1])


def _digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²" and other digits `int()` refuses."""
    return text.isascii() and text.isdigit()


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def response(request: SipMessage, status: int, *, to_tag: str | None = None, reason: str = "",
             headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> SipMessage:
    """A response to `request`: its Via stack, From, To (with `to_tag` added if it has none),
    Call-ID and CSeq echoed, then `headers` and the body."""
    echoed = [("via", v) for v in request.all("via")]
    to = request.get("to") or ""
    if to_tag and param(to, "tag") is None and status != 100:
        to = f"{to};tag={to_tag}"
    echoed += [("from", request.get("from") or ""), ("to", to), ("call-id", request.get("call-id") or ""),
               ("cseq", request.get("cseq") or "")]
    return SipMessage(status=status, reason=reason, headers=echoed + list(headers or []), body=body)


def with_received(via: str, host: str, port: int) -> str:
    """The top Via as the server records it (RFC 3261 18.2.1, RFC 3581): `received` and `rport`."""
    if re.search(r";\s*rport(?=;|$|\s)", via):
        via = re.sub(r";\s*rport(?=;|$|\s)", f";rport={port}", via, count=1)
    if param(via, "received") is None:
        via += f";received={host}"
    return via
