"""Keep WebRTC media on a UDP port range (`PARLEY_ICE_PORT_MIN`/`_MAX`), for firewalls and NAT.

aioice, aiortc's ICE agent, binds every host candidate to a port the kernel picks (port 0) and
has no setting for a range (aiortc/aioice#47; PR #112 proposes one).  Until it does, this
module gives aioice's `ice` module a view of asyncio in which binding to port 0 means "the
first free port in the range".  Nothing else in the process is affected.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

_installed: tuple[int, int] | None = None


class _Loop:
    def __init__(self, loop: asyncio.AbstractEventLoop, lo: int, hi: int) -> None:
        self._loop, self._lo, self._hi = loop, lo, hi

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kw: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kw)
        for port in range(self._lo, self._hi + 1):
            try:
                return await self._loop.create_datagram_endpoint(factory, local_addr=(local_addr[0], port), **kw)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self._lo}-{self._hi} (PARLEY_ICE_PORT_MIN/MAX)")


class _Asyncio:
    def __init__(self, lo: int, hi: int) -> None:
        self._lo, self._hi = lo, hi

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _Loop:
        return _Loop(asyncio.get_running_loop(), self._lo, self._hi)


def limit_ice_ports(lo: int, hi: int) -> None:
    """Bind ICE host candidates to UDP ports lo..hi (inclusive) from now on."""
    global _installed
    if not 0 < lo <= hi < 65536:
        raise ValueError(f"bad ICE port range {lo}-{hi}")
    import aioice.ice

    aioice.ice.asyncio = _Asyncio(lo, hi)  # type: ignore[attr-defined]
    _installed = (lo, hi)
