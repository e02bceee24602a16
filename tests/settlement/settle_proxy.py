"""A TCP proxy in front of PostgreSQL that can turn into a black hole.

``freeze()`` makes every connection open at that moment silently drop what it
carries, both ways, and never pass on a close: what a dead network path or a
stuck middlebox looks like to both ends (no error, no FIN, no RST).
``freeze(stall=True)`` stops reading instead, so the sender's buffers fill
and its writes block once the buffers are full (a path that stopped
acknowledging).  Connections opened later work normally.
"""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit


class _Pair:
    __slots__ = ("frozen", "writers", "tasks")

    def __init__(self):
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []


class BlackHoleProxy:
    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        self._unix = host.startswith("/")
        self._host = host
        self._port = parts.port or int(query.get("port", ["5432"])[0])
        self._user = parts.username or "postgres"
        self._dbname = parts.path.lstrip("/") or "postgres"
        self._pairs: list[_Pair] = []
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{self._dbname}"

    async def start(self) -> "BlackHoleProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self, stall: bool = False) -> int:
        """Black-hole every open connection; returns how many."""
        live = [p for p in self._pairs if not p.frozen]
        for p in live:
            p.frozen = True
            if stall:
                for t in p.tasks:
                    t.cancel()          # nobody reads any more; sockets stay open

        return len(live)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for p in self._pairs:
            for t in p.tasks:
                t.cancel()
            for w in p.writers:
                w.close()
        for p in self._pairs:
            await asyncio.gather(*p.tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        if self._unix:
            up_r, up_w = await asyncio.open_unix_connection(f"{self._host}/.s.PGSQL.{self._port}")
        else:
            up_r, up_w = await asyncio.open_connection(self._host, self._port)
        pair = _Pair()
        pair.writers = [client_w, up_w]
        self._pairs.append(pair)
        pair.tasks = [asyncio.create_task(self._pump(client_r, up_w, pair)),
                      asyncio.create_task(self._pump(up_r, client_w, pair))]

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: _Pair) -> None:
        try:
            while True:
                data = await src.read(65536)
                if pair.frozen:
                    if not data:            # a close is swallowed too: wait for close()
                        await asyncio.Event().wait()
                    continue                # dropped
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return
        if not pair.frozen:
            for w in pair.writers:
                w.close()
