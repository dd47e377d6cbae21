"""The FUSE side: the protocol adapter (ops), the daemon, its control socket
and the C shim. Semantics live in `astrid_fs.overlay`."""
