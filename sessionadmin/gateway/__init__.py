"""The MCP gateway: one asyncio process (``python manage.py mcp_gateway``) that holds the live
upstream connections of every attached MCP client and serves each session one MCP endpoint,
``/sessions/{session_id}/mcp``. See ``docs/gateway-design.md``.

With ``mcp_client.py``, the only code that imports the MCP SDK. Nothing here is imported by
web processes or workers: they use ``sessionadmin.gateway_client``.
"""
