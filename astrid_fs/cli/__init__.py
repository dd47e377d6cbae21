"""`astrid-fs`: the command line. Verbs print; they never decide."""

from astrid_fs.cli.main import main

__all__ = ["main"]
