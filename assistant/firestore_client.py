"""The Firestore client the store uses: the library's, quick to reconnect.

While the database is unreachable, gRPC waits longer and longer between its
tries to reconnect (1.6 times longer each time, up to two minutes), and
every call in between fails at once without trying. Measured against the
emulator: after a 40 s outage every write failed for 16 s more with the
database back. With the wait capped at `RECONNECT_MAX_MS`, the first write
after the database is back finds it within about a second (two or three
over a network that dropped packets: `CONNECT_ATTEMPT_MS`). One connection
attempt a second per instance while the database is away costs nothing.

Imported on first use only (store.py), as google.cloud.firestore is: a
request that saves nothing does not pay for it.
"""

from __future__ import annotations

from typing import Any

import grpc  # type: ignore[import-untyped]
from google.cloud import firestore
from google.cloud.firestore_v1 import base_client

RECONNECT_MAX_MS = 1000
# gRPC takes grpc.min_reconnect_backoff_ms as the time one attempt to connect may take
# (20 s by default). Over a network that drops packets, an attempt waits while the kernel
# sends its SYN again 1, 3, 7 and 15 s after the first: with the database back 12 s into
# such an outage, writes failed 8.5-8.9 s more. Attempts of 10 s start over sooner (1.5-2.1
# s). Shorter cut a database slower than that to answer a new connection off for ever (at
# 5 s, one whose handshake took 6 s was never reached and its messages were lost; at 1 s,
# one held, then back), where 20 s only found it late.
CONNECT_ATTEMPT_MS = 10000
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_MS),
]


class QuickToReconnect(firestore.Client):
    """firestore.Client with `_RECONNECT_OPTIONS` on its channel, on Google's
    servers and on the emulator alike (the library builds the two channels in
    two places, each with its own fixed options: both are extended here)."""

    def _firestore_api_helper(self, transport: Any, client_class: Any, client_module: Any) -> Any:
        return super()._firestore_api_helper(_reconnecting(transport), client_class, client_module)

    def _emulator_channel(self, transport: Any) -> grpc.Channel:
        # As the library's, whose token is "owner" unless credentials carry one (ours
        # never do), with our options added.
        options = [
            ("Authorization", "Bearer owner"),
            *base_client._GRPC_MSG_SIZE_OPTIONS,
            *_RECONNECT_OPTIONS,
        ]
        return grpc.insecure_channel(self._emulator_host, options=options)


def _reconnecting(transport: Any) -> Any:
    """The library's gRPC transport class, whose channels take our options too."""

    class Reconnecting(transport):  # type: ignore[misc]
        @classmethod
        def create_channel(cls, *args: Any, options: Any = (), **kwargs: Any) -> Any:
            return super().create_channel(*args, options=[*options, *_RECONNECT_OPTIONS], **kwargs)

    return Reconnecting
