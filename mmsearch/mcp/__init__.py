"""The MCP server: mmsearch's searches as Model Context Protocol tools, for AI assistants.

:mod:`.library` holds what the tools do (plain Python over :class:`mmsearch.Index`, no MCP),
:mod:`.app` registers them on the official SDK's ``MCPServer`` (stdio and streamable HTTP),
:mod:`.command` is ``mmsearch mcp``. ``mmsearch serve`` mounts the HTTP transport under
``/mcp`` (:func:`.app.http_app`), behind the server's own security middleware.
"""
