"""Outbound network owned by the kernel: HTTP for plugins (`astrid:kernel/http`)."""
