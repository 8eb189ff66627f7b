"""The agent-facing MCP server: one lowlevel SDK ``Server`` behind one streamable-HTTP session
manager serves every session's endpoint. Each handler finds its session in the ASGI scope of the
HTTP exchange (``ctx.request.scope``), where the front put it after checking the bearer token.

What a session's endpoint shows is the union of its attached clients:
- tools and prompts as ``{client_id}__{name}``; a tool is listed only while its definition
  matches the one pinned at attach (or approved since): quarantined tools are hidden and calls
  to them refused;
- resources as ``sessionadmin://{client_id}/{percent-quoted original URI}`` (templates keep their
  ``{placeholders}`` unquoted), so a read reaches the right client with the original URI.
"""

from __future__ import annotations

import uuid
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from sessionadmin.gateway.core import Gateway, SessionEnded, SessionState, ToolRefused
from sessionadmin.gateway.upstream import Unavailable, Upstream
from sessionadmin.mcp_client import McpError, definition_sha256
from sessionadmin.redaction import Redactor

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

STATE_KEY = "sessionadmin.session"
SEPARATOR = "__"
RESOURCE_SCHEME = "sessionadmin://"


def agent_actor(session_id: uuid.UUID) -> str:
    return f"agent:{session_id}"


def resource_uri(client_id: str, original: str, *, template: bool = False) -> str:
    return f"{RESOURCE_SCHEME}{client_id}/{quote(original, safe='{}' if template else '')}"


def parse_resource_uri(uri: str) -> tuple[str, str] | None:
    if not uri.startswith(RESOURCE_SCHEME):
        return None
    client_id, sep, rest = uri[len(RESOURCE_SCHEME) :].partition("/")
    return (client_id, unquote(rest)) if sep and client_id else None


class _Exposed:
    """The tools of one upstream the agent may see, recomputed when its listing or pins change."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] = ()
        self.tools: list[Any] = []


def traceparent_of(ctx: Any, params: Any) -> str:
    """The caller's W3C trace context: ``params._meta.traceparent`` (how the MCP semantic
    conventions propagate it), else the HTTP ``traceparent`` header."""
    meta = getattr(params, "meta", None)
    value = getattr(meta, "traceparent", None) if meta is not None else None
    if value is None and meta is not None:
        extra = getattr(meta, "model_extra", None) or {}
        value = extra.get("traceparent")
    if not value and ctx.request is not None:
        value = ctx.request.headers.get("traceparent", "")
    return str(value or "")[:128]


def build_server(gateway: Gateway) -> Server[Any]:
    import mcp_types as types
    from mcp.server.lowlevel import NotificationOptions, Server
    from mcp.shared.exceptions import MCPError
    from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    exposed: weakref.WeakKeyDictionary[Upstream, _Exposed] = weakref.WeakKeyDictionary()

    class EndpointServer(Server[Any]):
        def create_initialization_options(self, notification_options: Any = None, *args: Any, **kwargs: Any) -> Any:
            # The session manager asks with no options, which would advertise listChanged=false;
            # our lists do change (attach, detach, approvals) and legacy agents are told.
            return super().create_initialization_options(NotificationOptions(True, True, True), *args, **kwargs)

    def state_of(ctx: Any) -> SessionState:
        request = ctx.request
        state = request.scope.get(STATE_KEY) if request is not None else None
        if state is None or state.ended:
            raise MCPError(INVALID_REQUEST, "this session has ended")
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            mcp_session_id = request.headers.get("mcp-session-id")
            if mcp_session_id:
                state.remember_legacy(mcp_session_id, ctx.session)
        assert isinstance(state, SessionState)
        return state

    def tools_of(upstream: Upstream) -> list[Any]:
        snapshot, pinned, quarantined = upstream.snapshot, upstream.info.pinned, upstream.info.quarantined
        key = (snapshot, pinned, quarantined)
        cache = exposed.setdefault(upstream, _Exposed())
        if len(cache.key) == 3 and all(a is b for a, b in zip(cache.key, key, strict=True)):
            return cache.tools
        tools = []
        for definition in snapshot.tools if snapshot else []:
            name = definition["name"]
            if name in quarantined or pinned.get(name, {}).get("sha256") != definition_sha256(definition):
                continue
            definition = redactor_of(upstream).json(definition)  # the pin holds the original's hash
            tools.append(
                types.Tool(
                    name=f"{upstream.info.client_id}{SEPARATOR}{name}",
                    title=definition.get("title") or None,
                    description=definition.get("description") or None,
                    input_schema=definition.get("input_schema") or {"type": "object"},
                    output_schema=definition.get("output_schema"),
                    annotations=definition.get("annotations"),
                )
            )
        cache.key, cache.tools = key, tools
        return tools

    def upstream_for(state: SessionState, prefixed: str) -> tuple[Upstream, str]:
        client_id, sep, name = prefixed.partition(SEPARATOR)
        upstream = state.upstreams.get(client_id) if sep else None
        if upstream is None or upstream.closed:
            raise MCPError(INVALID_PARAMS, f"unknown name {prefixed!r}")
        return upstream, name

    def redactor_of(upstream: Upstream) -> Redactor:
        """The catalog entry's secrets, kept out of everything the agent sees."""
        return Redactor.for_target(upstream.info.target)

    async def list_tools(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        tools = [tool for _, upstream in sorted(state.upstreams.items()) for tool in tools_of(upstream)]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        upstream, name = upstream_for(state, params.name)
        if name not in upstream.info.pinned and name not in upstream.info.quarantined:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r}")
        try:
            return await gateway.call(
                state,
                upstream,
                name,
                dict(params.arguments or {}),
                actor=agent_actor(state.id),
                traceparent=traceparent_of(ctx, params),
                mcp_session_id=ctx.request.headers.get("mcp-session-id", "") if ctx.request is not None else "",
            )
        except ToolRefused as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None
        except SessionEnded:
            raise MCPError(INVALID_REQUEST, "this session has ended") from None
        except (McpError, Unavailable) as exc:
            # The tool could not run: an error result the agent (and its model) can read.
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)

    async def list_resources(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        resources = [
            types.Resource(
                uri=resource_uri(client_id, r["uri"]),
                name=f"{client_id}{SEPARATOR}{r['name']}",
                title=r.get("title") or None,
                description=r.get("description") or None,
                mime_type=r.get("mime_type") or None,
            )
            for client_id, upstream in sorted(state.upstreams.items())
            for r in (upstream.snapshot.resources if upstream.snapshot else [])
        ]
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        templates = [
            types.ResourceTemplate(
                uri_template=resource_uri(client_id, t["uri_template"], template=True),
                name=f"{client_id}{SEPARATOR}{t['name']}",
                title=t.get("title") or None,
                description=t.get("description") or None,
                mime_type=t.get("mime_type") or None,
            )
            for client_id, upstream in sorted(state.upstreams.items())
            for t in (upstream.snapshot.resource_templates if upstream.snapshot else [])
        ]
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        parsed = parse_resource_uri(str(params.uri))
        upstream = state.upstreams.get(parsed[0]) if parsed else None
        if parsed is None or upstream is None:
            raise MCPError(INVALID_PARAMS, f"unknown resource {str(params.uri)[:200]!r}")
        try:
            result = await upstream.read_resource(parsed[1])
        except (McpError, Unavailable) as exc:
            raise MCPError(INTERNAL_ERROR, str(exc)) from None
        contents = []
        for item in result.contents:
            data = redactor_of(upstream).json(item.model_dump(mode="json", by_alias=True, exclude_none=True))
            data["uri"] = resource_uri(parsed[0], str(item.uri))
            contents.append(data)
        return types.ReadResourceResult.model_validate({"contents": contents})

    async def list_prompts(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        prompts = [
            types.Prompt(
                name=f"{client_id}{SEPARATOR}{p['name']}",
                title=p.get("title") or None,
                description=p.get("description") or None,
                arguments=[
                    types.PromptArgument(name=a["name"], description=a.get("description") or None, required=a.get("required"))
                    for a in p.get("arguments", [])
                ],
            )
            for client_id, upstream in sorted(state.upstreams.items())
            for p in (upstream.snapshot.prompts if upstream.snapshot else [])
        ]
        return types.ListPromptsResult(prompts=prompts)

    async def get_prompt(ctx: Any, params: Any) -> Any:
        state = state_of(ctx)
        upstream, name = upstream_for(state, params.name)
        try:
            result = await upstream.get_prompt(name, dict(params.arguments) if params.arguments else None)
        except (McpError, Unavailable) as exc:
            raise MCPError(INTERNAL_ERROR, str(exc)) from None
        data = redactor_of(upstream).json(result.model_dump(mode="json", by_alias=True, exclude_none=True))
        data.pop("_meta", None)
        return types.GetPromptResult.model_validate(data)

    async def listen(ctx: Any, params: Any) -> Any:
        return await state_of(ctx).listen(ctx, params)

    def input_schema(name: str) -> Any:
        # The 2026 transport checks Mcp-Param headers against the called tool's schema; it asks
        # here instead of running tools/list per call. The front sets the session for this task.
        from sessionadmin.gateway.app import current_state

        state = current_state.get()
        if state is None:
            return None
        client_id, _, tool = name.partition(SEPARATOR)
        upstream = state.upstreams.get(client_id)
        definition = (upstream.info.pinned.get(tool) or {}).get("definition") if upstream else None
        return definition.get("input_schema") if definition else None

    server = EndpointServer(
        "sessionadmin",
        version="1",
        instructions="Tools, resources and prompts of the MCP servers attached to this sessionadmin session.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_subscriptions_listen=listen,
        get_tool_input_schema=input_schema,
    )
    # No OpenTelemetry middleware: with no exporter it only costs (~0.5 ms of CPU per request here).
    server.middleware = []
    return server
