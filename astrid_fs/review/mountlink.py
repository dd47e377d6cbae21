"""What the review needs from a session's mount, as a hook the caller gives.

Review verbs change the layers behind a mounted session's back, so they
must flush the mount before reading the upper (`sync`), tell it what
changed afterwards (`changed`), and leave alone the upper files its kernel
writes through passthrough (`held_upper_inodes`). How that is asked (the
daemon's control socket) is the CLI's business (cli/daemonlink.py): the
review only sees this protocol, so it imports nothing of the FUSE side.

A verb called without a link works on a session nobody mounts; on a
mounted one it refuses (`link_for`), since reading an unflushed upper or
leaving the kernel's caches stale could show or land the wrong bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from astrid_fs.errors import SessionError
from astrid_fs.session import Session


class MountLink(Protocol):
    """The mount of one session, as the review verbs use it."""

    def sync(self, bases: bool = True) -> None:
        """Make the upper layer current on disk (no-op when not mounted),
        and with `bases` wait until the base of every mounted source is
        recorded (review/remotebase.py)."""

    def changed(self, paths: Iterable[str] | None) -> None:
        """The layers changed at these session paths (None: anywhere): drop
        what the mount cached of them. May raise MountError."""

    def held_upper_inodes(self) -> frozenset[int]:
        """st_ino of the upper files the mount's kernel holds open."""


class Unmounted:
    """The link of a session nobody mounts: nothing to flush or tell."""

    def sync(self, bases: bool = True) -> None:
        return None

    def changed(self, paths: Iterable[str] | None) -> None:
        return None

    def held_upper_inodes(self) -> frozenset[int]:
        return frozenset()


UNMOUNTED = Unmounted()


def link_for(session: Session, given: MountLink | None) -> MountLink:
    """`given`, or for a caller that gave none, the link of an unmounted
    session; a session mounted by a live daemon then is refused."""
    if given is not None:
        return given
    state = session.mount_state()
    if state is not None and state.alive():
        raise SessionError(f"session {session.name} is mounted on {state.mountpoint}: "
                           "the caller must pass its mount link (cli/daemonlink.py)")
    return UNMOUNTED
