"""Child process for tests/net/test_rsocket.py: a slow ``remote_flow`` consumer, killed mid-stream.

Run as ``python tests/net/_rsocket_client.py PORT``. It subscribes to the server's
``numbers`` route (a billion items), asks for ``WINDOW`` items at a time, one window per
``PAUSE_S``, and prints ``{"received": n, "requested": m}`` per window. It never ends by
itself: the test kills it (SIGKILL) and watches the server cancel the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.helpers import single_transport_provider
from rsocket.rsocket_client import RSocketClient
from rsocket.transports.tcp import TransportTCP

from reactive_bp.connectors.rsocket import remote_flow
from reactive_bp.testing import TestSubscriber

WINDOW = 10
PAUSE_S = 0.01


async def main(port: int) -> None:
    logging.getLogger("pyrsocket").setLevel(logging.CRITICAL)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RSocketClient(
        single_transport_provider(TransportTCP(reader, writer)),
        metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
    )
    await client.connect()
    consumer: TestSubscriber[bytes] = TestSubscriber()
    remote_flow(client, "numbers", b"1000000000").subscribe(consumer)
    while True:
        consumer.request(WINDOW)
        await asyncio.sleep(PAUSE_S)
        line = {"received": len(consumer.items), "requested": consumer.requested}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
