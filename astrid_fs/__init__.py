"""astrid_fs: the copy-on-write overlay filesystem service of Astrid.

A read-only lower layer (the user's project), a read-write upper layer per
session in the on-disk format of Linux overlayfs, served over FUSE.
"""

__version__ = "0.1.0"
