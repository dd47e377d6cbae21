"""The bus: the topic router (`router`), what travels on it (`message`), a
consumer's mailbox and a publisher's quota (`mailbox`), the one topic matcher
(`topics`), and the bridge to NATS beneath it (`nats/`: `wire` holds its
rules as pure functions, `bridge` the connection).

`from astrid_runtime.bus import Bus, Tap, ...` names the router's API.
"""

from astrid_runtime.bus.router import (
    CLIENT,
    KERNEL,
    Bus,
    Doorbell,
    Endpoint,
    Mailbox,
    MailboxStats,
    Message,
    Sender,
    Tap,
    TokenBucket,
)

__all__ = ["CLIENT", "KERNEL", "Bus", "Doorbell", "Endpoint", "Mailbox", "MailboxStats",
           "Message", "Sender", "Tap", "TokenBucket"]
