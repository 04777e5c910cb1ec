"""`DrainingServer`: uvicorn's server, answering every request before it stops.

On SIGTERM uvicorn stops accepting connections, waits up to its graceful timeout for open
ones, and only then runs the app's lifespan shutdown. Requests still pending in the batcher at
that point would be cut off with uvicorn's plain-text 500. So the embedding service is drained
as soon as shutdown begins: it refuses new work (JSON 503), finishes what it can within
`--shutdown-timeout`, and answers the rest with the documented JSON 503; the connections then
close by themselves and the process exits, at most one model run after the timeout.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from fastelectra.serve.service import EmbeddingService

# How much longer than --shutdown-timeout uvicorn's own backstop waits: the model run that was
# in progress at the timeout (runs are bounded by --max-batch-tokens) and the last responses.
DRAIN_MARGIN_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: EmbeddingService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.create_task(self.service.stop())
        try:
            await super().shutdown(sockets)
        finally:
            await drain
