"""astrid_runtime: the Astrid kernel (astridd) and its client (astrid)."""

__version__ = "0.1.0"
