"""Reviewing a session: changes, diff, commit (journaled), conflicts,
snapshots, discard. Works on the session's layers, mounted or not."""
