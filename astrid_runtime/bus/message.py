"""What travels on the bus: a `Message` and its `Sender` as the kernel saw it.
Plain values: no lock, no trio."""

from __future__ import annotations

from dataclasses import dataclass

#: Publisher name used for messages that come from `astrid publish`.
CLIENT = "client"
#: Publisher name of messages the kernel itself publishes.
KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class Sender:
    """Who published a message, as the kernel saw it; nothing a plugin sends sets it.

    `plugin` is the publishing plugin's name (`client` for `astrid publish`,
    `kernel` for the kernel itself); `kernel` is None for a message published
    on this kernel, else the hex ed25519 key of the kernel it came from, whose
    signature the bridge verified.
    """

    plugin: str
    kernel: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    #: A name unique across kernels: the plugin, `client` or `kernel` here, and
    #: `nats:<kernel>/<plugin>` for a bridged message (never a local plugin's name).
    publisher: str
    #: The structured sender (`Sender`); None in messages made outside the bus.
    sender: Sender | None = None
    #: The bus sequence number, in delivery order (0 in messages made outside the bus).
    seq: int = 0

    @property
    def who(self) -> Sender:
        """The sender as the kernel saw it (a local publisher when unset)."""
        return self.sender if self.sender is not None else Sender(self.publisher)
