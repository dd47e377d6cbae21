"""Model Context Protocol frontends: `astrid mcp` serves a session's file tool to an MCP
client (server.py, cli.py) over the kernel bus (filetool.py)."""
