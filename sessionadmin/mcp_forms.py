"""Forms of the MCP pages: attach, the catalog entry, and the tool call generated from a tool's
JSON input schema."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings

from sessionadmin.mcp_services import CLIENT_ID_RE, check_read_only_paths, url_policy_error
from sessionadmin.models import McpServer
from sessionadmin.secrets import mask

ADHOC_TRANSPORTS = [(McpServer.Transport.STREAMABLE_HTTP, "Streamable HTTP"), (McpServer.Transport.SSE, "SSE")]
NESTED_HELP = "JSON"


class AttachForm(forms.Form):
    server = forms.ModelChoiceField(queryset=McpServer.objects.none(), required=False, empty_label="— choose a catalog server —")
    url = forms.URLField(required=False, max_length=2000, label="or an ad-hoc URL", assume_scheme="https")
    transport = forms.ChoiceField(choices=ADHOC_TRANSPORTS, required=False, initial=McpServer.Transport.STREAMABLE_HTTP)
    client_id = forms.CharField(
        required=False, max_length=100, label="Client id", help_text="Optional; from the server name when empty."
    )

    def __init__(self, *args: Any, allow_adhoc: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_adhoc = allow_adhoc
        server_field = self.fields["server"]
        server_field.queryset = McpServer.objects.filter(enabled=True).order_by("name")  # type: ignore[attr-defined]
        # Entries the stdio allow-list refuses stay visible (an operator should learn why one
        # cannot be attached, not wonder where it went); attaching one is refused and audited.
        server_field.label_from_instance = lambda s: f"{s} — not allowed" if s.refusal else str(s)  # type: ignore[attr-defined]
        if not allow_adhoc:
            del self.fields["url"]
            del self.fields["transport"]

    def clean_client_id(self) -> str:
        value: str = self.cleaned_data.get("client_id", "").strip()
        if value and not CLIENT_ID_RE.match(value):
            raise forms.ValidationError("Lowercase letters, digits, '-' and '_' only.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        has_server, has_url = bool(data.get("server")), bool(data.get("url"))
        if has_server == has_url:
            raise forms.ValidationError(
                "Choose a catalog server or give a URL (not both)." if self.allow_adhoc else "Choose a catalog server."
            )
        return data


class SecretTextarea(forms.Textarea):
    """Never renders a value back into the page, not even the one just typed."""

    def format_value(self, value: Any) -> str | None:
        return None


def _parse_pairs(text: str, separator: str, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(separator)
        if not sep or not name.strip():
            raise forms.ValidationError(f"{label} line {number}: expected NAME{separator}value.")
        out[name.strip()] = value.strip()
    return out


class McpServerForm(forms.ModelForm):
    url = forms.URLField(
        required=False,
        max_length=2000,
        assume_scheme="https",
        label="URL",
        help_text="Streamable HTTP (…/mcp) or SSE (…/sse) endpoint.",
    )
    args_text = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Arguments", help_text="stdio: one argument per line."
    )
    read_only_paths_text = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Read-only paths",
        help_text=(
            "stdio: absolute host paths the sandboxed server sees read-only, one per line, besides the system "
            "folders: e.g. its venv or node_modules (a Python venv also needs its base interpreter, sys.base_prefix)."
        ),
    )
    headers_text = forms.CharField(
        required=False,
        widget=SecretTextarea(attrs={"rows": 3, "autocomplete": "off"}),
        label="Headers",
        help_text="Name: value per line. Empty keeps the stored headers, unless the transport or URL changes: "
        "secrets are bound to their target, so enter them again with a new one.",
    )
    env_text = forms.CharField(
        required=False,
        widget=SecretTextarea(attrs={"rows": 3, "autocomplete": "off"}),
        label="Environment",
        help_text="NAME=value per line. Empty keeps the stored values, unless the command or arguments change: "
        "enter them again with a new one.",
    )
    clear_headers = forms.BooleanField(required=False, label="Remove all stored headers")
    clear_env = forms.BooleanField(required=False, label="Remove all stored environment values")

    class Meta:
        model = McpServer
        fields = ["name", "description", "transport", "url", "command", "network", "enabled"]
        labels = {"network": "Network"}
        help_texts = {"network": "stdio: let the sandboxed server use the network (off: it has none)."}

    # Which fields belong to which transport: the dashboard's form shows only those of the
    # chosen one (the others are left empty, as they mean nothing for it).
    COMMON_FIELDS = ("name", "description", "transport", "enabled")
    HTTP_FIELDS = ("url", "headers_text", "clear_headers")
    STDIO_FIELDS = ("command", "args_text", "read_only_paths_text", "env_text", "clear_env", "network")

    def transport_shown(self, requested: str = "") -> str:
        """The transport whose fields the page shows: the one asked for (the select changed),
        else the posted or stored one, else Streamable HTTP."""
        choices = McpServer.Transport.values
        current = requested or str(self["transport"].value() or "")
        return current if current in choices else McpServer.Transport.STREAMABLE_HTTP

    def fields_for(self, transport: str) -> list[Any]:
        """The bound fields of ``transport``, in form order (common fields excluded)."""
        names = self.STDIO_FIELDS if transport == McpServer.Transport.STDIO else self.HTTP_FIELDS
        return [self[name] for name in self.fields if name in names]

    def common_fields(self) -> list[Any]:
        return [self[name] for name in self.fields if name in self.COMMON_FIELDS]

    def __init__(
        self, *args: Any, stored_headers: dict[str, str] | None = None, stored_env: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stored_headers = {k: mask(v) for k, v in (stored_headers or {}).items()}
        self.stored_env = {k: mask(v) for k, v in (stored_env or {}).items()}
        if self.instance.pk and not self.is_bound:
            self.initial["args_text"] = "\n".join(str(a) for a in self.instance.args or [])
            self.initial["read_only_paths_text"] = "\n".join(str(p) for p in self.instance.read_only_paths or [])
        allowed = settings.SESSIONADMIN_STDIO_COMMANDS
        if "command" in self.fields:  # absent from the admin's view-only form
            self.fields["command"].help_text = (
                f"stdio: one of the allowed executables ({', '.join(allowed)})."
                if allowed
                else "stdio: no command is allowed on this installation (SESSIONADMIN_STDIO_COMMANDS is empty)."
            )

    def clean_headers_text(self) -> dict[str, str] | None:
        text = self.cleaned_data.get("headers_text", "")
        return _parse_pairs(text, ":", "Headers") if text.strip() else None

    def clean_env_text(self) -> dict[str, str] | None:
        text = self.cleaned_data.get("env_text", "")
        return _parse_pairs(text, "=", "Environment") if text.strip() else None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        transport = data.get("transport")
        if transport == McpServer.Transport.STDIO and not data.get("command"):
            self.add_error("command", "A stdio server needs a command.")
        if transport in (McpServer.Transport.STREAMABLE_HTTP, McpServer.Transport.SSE):
            if not data.get("url"):
                self.add_error("url", "This transport needs a URL.")
            elif refused := url_policy_error(data["url"]):
                self.add_error("url", refused)
        self.instance.args = [line.strip() for line in data.get("args_text", "").splitlines() if line.strip()]
        paths = [line.strip() for line in data.get("read_only_paths_text", "").splitlines() if line.strip()]
        try:
            self.instance.read_only_paths = check_read_only_paths(paths) if transport == McpServer.Transport.STDIO else []
        except ValueError as exc:
            self.add_error("read_only_paths_text", str(exc))
        return data

    def secrets_to_store(self) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        """(headers, env) to encrypt: a new mapping, {} to clear, None to keep."""
        headers = {} if self.cleaned_data.get("clear_headers") else self.cleaned_data.get("headers_text")
        env = {} if self.cleaned_data.get("clear_env") else self.cleaned_data.get("env_text")
        return headers, env


def cleared_secrets_notice(server: McpServer) -> str:
    """What to tell the person who saved an entry whose secrets ``save_server`` removed."""
    names = " and ".join({"headers": "headers", "env": "environment values"}[n] for n in server.secrets_cleared)
    return f"The target of {server.name} changed: its stored {names} were removed. Enter them again if the new target needs them."


# --- tool calls ---------------------------------------------------------------------------------


def _resolve(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = schema
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return {**node, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


SCALAR_TYPES = ("string", "integer", "number", "boolean")
MAX_SUB_FIELDS = 20


def _unwrap_nullable(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {"type": "null"}]`` (an optional value, as pydantic writes it) or
    ``type: [X, "null"]`` is X for a form: an empty field already means "not given"."""
    prop = _resolve(schema, prop)
    for key in ("anyOf", "oneOf"):
        options = prop.get(key)
        if isinstance(options, list) and len(options) == 2:
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1 and isinstance(rest[0], dict):
                outer = {k: v for k, v in prop.items() if k != key}
                return {**_resolve(schema, rest[0]), **outer}
    kind = prop.get("type")
    if isinstance(kind, list) and len(kind) == 2 and "null" in kind:
        return {**prop, "type": next(k for k in kind if k != "null")}
    return prop


def _is_scalar(prop: dict[str, Any]) -> bool:
    enum = prop.get("enum")
    return prop.get("type") in SCALAR_TYPES or (isinstance(enum, list) and bool(enum))


def _simple_object(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The properties of an object whose every property is a plain value (a few of them), else
    None: such an object gets one field per property; anything deeper stays JSON."""
    if prop.get("type") != "object" or not isinstance(prop.get("properties"), dict):
        return None
    props = {str(k): _unwrap_nullable(schema, v) for k, v in prop["properties"].items() if isinstance(v, dict)}
    if not props or len(props) > MAX_SUB_FIELDS or len(props) != len(prop["properties"]):
        return None
    return props if all(_is_scalar(p) for p in props.values()) else None


def _scalar_array(schema: dict[str, Any], prop: dict[str, Any]) -> str | None:
    """The item type of an array of strings or numbers, else None."""
    if prop.get("type") != "array" or not isinstance(prop.get("items"), dict):
        return None
    items = _unwrap_nullable(schema, prop["items"])
    return items["type"] if items.get("type") in ("string", "integer", "number") and not items.get("enum") else None


def _field_for(prop: dict[str, Any], required: bool) -> tuple[forms.Field, str]:
    """A form field for one property, and how to read its value ("scalar" or "json")."""
    label = str(prop.get("title") or "")
    help_text = str(prop.get("description") or "")
    kind = prop.get("type")
    common: dict[str, Any] = {"required": required, "help_text": help_text}
    if label:
        common["label"] = label
    if "default" in prop and not isinstance(prop["default"], dict | list):
        common["initial"] = prop["default"]
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str | int | float) for v in enum):
        choices = ([] if required else [("", "—")]) + [(str(v), str(v)) for v in enum]
        return forms.ChoiceField(choices=choices, **common), "enum"
    if kind == "string":
        return forms.CharField(strip=False, max_length=prop.get("maxLength"), **common), "scalar"
    if kind == "integer":
        return forms.IntegerField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **common), "scalar"
    if kind == "number":
        return forms.FloatField(min_value=prop.get("minimum"), max_value=prop.get("maximum"), **common), "scalar"
    if kind == "boolean":
        # An unchecked box is "false": a required boolean is always answered.
        common["required"] = False
        return forms.BooleanField(**common), "bool"
    field = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "class": "json"}), **common)
    field.help_text = f"{help_text} ({NESTED_HELP})".strip()
    return field, "json"


class ToolCallForm(forms.Form):
    """Fields generated from a tool's input schema: strings, numbers, integers, booleans and
    enums get their own inputs (an optional ``anyOf [X, null]`` is X), an object of such values
    one input per property, a list of strings or numbers a textarea with one per line; anything
    deeper (nested objects, arrays of objects, unions) a JSON textarea."""

    RAW = "arguments"

    def __init__(self, schema: dict[str, Any] | None, *args: Any, raw: bool = False, **kwargs: Any) -> None:
        """``raw``: the tool's schema was too large to store; its arguments are typed as one
        JSON object."""
        super().__init__(*args, **kwargs)
        self.raw = raw
        if raw:
            self.fields[self.RAW] = forms.CharField(
                initial="{}",
                widget=forms.Textarea(attrs={"rows": 6, "class": "json"}),
                help_text="The tool's input schema was too large to keep: its arguments, as a JSON object.",
            )
            self.kinds: dict[str, str] = {}
            return
        self.schema = schema if isinstance(schema, dict) else {}
        props = self.schema.get("properties") if isinstance(self.schema.get("properties"), dict) else {}
        required = set(self.schema.get("required") or [])
        self.kinds = {}
        self.enum_values: dict[str, list[Any]] = {}
        self.parts: dict[str, dict[str, str]] = {}
        self.item_types: dict[str, str] = {}
        for name, raw in (props or {}).items():
            prop = _unwrap_nullable(self.schema, raw if isinstance(raw, dict) else {})
            if self._add_structured(name, prop, name in required):
                continue
            field, kind = _field_for(prop, name in required)
            self.fields[f"arg_{name}"] = field
            if not field.label:
                field.label = name
            self.kinds[name] = kind
            if kind == "enum":
                self.enum_values[name] = list(prop["enum"])

    def _add_structured(self, name: str, prop: dict[str, Any], required: bool) -> bool:
        """Fields for a simple object (one per property, named ``arg_<name>__<property>``) or a
        list of plain values (one per line); False when ``prop`` is neither."""
        label = str(prop.get("title") or name)
        item_type = _scalar_array(self.schema, prop)
        if item_type is not None:
            help_text = " ".join(filter(None, [str(prop.get("description") or ""), f"One {item_type} per line."]))
            self.fields[f"arg_{name}"] = forms.CharField(
                required=required, label=label, help_text=help_text, widget=forms.Textarea(attrs={"rows": 3})
            )
            self.kinds[name], self.item_types[name] = "lines", item_type
            return True
        props = _simple_object(self.schema, prop)
        if props is None:
            return False
        inner_required = set(prop.get("required") or [])
        self.parts[name] = {}
        for sub, sub_prop in props.items():
            field, kind = _field_for(sub_prop, required and sub in inner_required)
            field.label = f"{label} / {sub_prop.get('title') or sub}"
            self.fields[f"arg_{name}__{sub}"] = field
            self.parts[name][sub] = kind
            if kind == "enum":
                self.enum_values[f"{name}__{sub}"] = list(sub_prop["enum"])
        self.kinds[name] = "object"
        return True

    def _value(self, key: str, kind: str, value: Any) -> Any:
        if kind == "enum":
            return next((v for v in self.enum_values[key] if str(v) == value), value)
        return value

    def _object(self, name: str) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for sub, kind in self.parts[name].items():
            value = self.cleaned_data.get(f"arg_{name}__{sub}")
            if kind == "bool":
                if value:
                    out[sub] = True
            elif value not in (None, ""):
                out[sub] = self._value(f"{name}__{sub}", kind, value)
        return out or None

    def _lines(self, name: str) -> list[Any] | None:
        value = self.cleaned_data.get(f"arg_{name}")
        return value if isinstance(value, list) and value else None

    def arguments(self) -> dict[str, Any]:
        """The tool's arguments from cleaned data; empty optional fields are left out."""
        if self.raw:
            return dict(self.cleaned_data[self.RAW])
        out: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            if kind in ("object", "lines"):
                structured = self._object(name) if kind == "object" else self._lines(name)
                if structured is not None:
                    out[name] = structured
                continue
            value = self.cleaned_data.get(f"arg_{name}")
            if kind == "bool":
                out[name] = bool(value)
            elif value in (None, ""):
                continue
            elif kind == "enum":
                out[name] = next((v for v in self.enum_values[name] if str(v) == value), value)
            elif kind == "json":
                out[name] = value  # parsed in clean()
            else:
                out[name] = value
        return out

    def _parse_lines(self, key: str, text: str, item_type: str) -> list[Any]:
        items: list[Any] = []
        for line in (line.strip() for line in text.splitlines()):
            if not line:
                continue
            if item_type == "string":
                items.append(line)
                continue
            try:
                items.append(int(line) if item_type == "integer" else float(line))
            except ValueError:
                self.add_error(key, f"Not a{'n' if item_type == 'integer' else ''} {item_type}: {line[:50]}")
        return items

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.raw and self.RAW in data:
            try:
                data[self.RAW] = json.loads(data[self.RAW])
            except ValueError as exc:
                self.add_error(self.RAW, f"Not valid JSON: {exc}")
            else:
                if not isinstance(data[self.RAW], dict):
                    self.add_error(self.RAW, "The arguments must be a JSON object.")
        for name, kind in self.kinds.items():
            key = f"arg_{name}"
            if kind == "lines" and data.get(key) not in (None, ""):
                data[key] = self._parse_lines(key, str(data[key]), self.item_types[name])
            if kind == "json" and data.get(key) not in (None, ""):
                try:
                    data[key] = json.loads(data[key])
                except ValueError as exc:
                    self.add_error(key, f"Not valid JSON: {exc}")
        return data
