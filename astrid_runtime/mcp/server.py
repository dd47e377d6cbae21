"""The session's tools as an MCP server: the file tool's operations, typed.

Each MCP tool is one file tool command on the bus (filetool.py), so an MCP
client's edit takes exactly the path an agent's does: the pinned `filetool`
plugin, its vfs grant (paths resolved beneath the workspace by the kernel,
`..` and absolute paths refused there), the audit trail, and for
`commit_session` the approval pipeline, which may wait for a person
(`astrid approvals` / `approve ID`). A refusal comes back as a tool error
(`is_error`), never as a protocol error: the client's model reads it.
"""

from __future__ import annotations

from pathlib import Path

import trio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from astrid_runtime.dashboard.app import session_patch
from astrid_runtime.mcp.filetool import FileToolClient, ToolRequestError, command

INSTRUCTIONS = (
    "Files of an Astrid session: every edit lands in the session's own layer over the "
    "project, not in the project, until a person commits it (commit_session asks them). "
    "Paths are relative to the workspace root; '..' and absolute paths are refused.")


class SessionTools:
    """The tool functions, bound to one file tool client and its time limits."""

    def __init__(self, files: FileToolClient, reply_timeout_s: float, ask_timeout_s: float,
                 session: str, home: Path):
        self.files = files
        self.session = session
        self.home = home
        self.reply_timeout_s = reply_timeout_s
        #: A commit may wait for a person for as long as the policy lets an ask wait.
        self.commit_timeout_s = ask_timeout_s + reply_timeout_s

    async def _run(self, verb: str, *args: str, timeout_s: float | None = None) -> str:
        try:
            text = command(verb, *args)
            reply = await self.files.ask(text, timeout_s or self.reply_timeout_s)
        except ToolRequestError as e:
            raise ToolError(str(e)) from None
        if not reply.ok:
            raise ToolError(reply.text)
        return reply.text

    async def read_file(self, path: str) -> str:
        """Read a UTF-8 text file of the session (the first 16 KiB)."""
        return await self._run("cat", path)

    async def write_file(self, path: str, content: str) -> str:
        """Create or replace a file with content (a final newline is added if missing;
        parent directories are made)."""
        return await self._run("write", path, content)

    async def append_file(self, path: str, content: str) -> str:
        """Append content (and a newline if missing) to a file, creating it if need be."""
        return await self._run("append", path, content)

    async def replace_in_file(self, path: str, old: str, new: str) -> str:
        """Replace every occurrence of old with new in a text file."""
        return await self._run("replace", path, old, new)

    async def list_directory(self, path: str = "") -> str:
        """List a directory of the session (the workspace root by default); directories
        end with '/'."""
        return await self._run("ls", path)

    async def session_diff(self) -> str:
        """What the session changed so far, as a unified diff against the project (what
        commit_session would land)."""
        ok, text = await trio.to_thread.run_sync(session_patch, self.home, self.session)
        if not ok:
            raise ToolError(text)
        return text

    async def commit_session(self, paths: list[str] | None = None) -> str:
        """Ask a person to land the session's changes (only `paths`, or all) in the
        project; waits for their answer (approval `fs.commit`)."""
        return await self._run("commit", *(paths or []), timeout_s=self.commit_timeout_s)


def build_server(tools: SessionTools, session: str) -> MCPServer:
    """An MCP server offering `tools` for the session named `session`."""
    server: MCPServer = MCPServer(f"astrid-{session}", instructions=INSTRUCTIONS,
                                  log_level="WARNING")
    for fn in (tools.read_file, tools.write_file, tools.append_file, tools.replace_in_file,
               tools.list_directory, tools.session_diff, tools.commit_session):
        server.add_tool(fn, structured_output=False)
    return server


__all__ = ["INSTRUCTIONS", "SessionTools", "build_server"]
