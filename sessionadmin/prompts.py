"""System prompt composition: global, then org, then user layers, each rendered with variables.

Rendering is a plain ``{{ name }}`` substitution from a dict of strings: no expressions, no
attribute or item access, no code, so a prompt layer written by one org cannot read anything
but the variables it is given. Unknown placeholders are left as written.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import connection

from sessionadmin.models import Org, PromptLayer
from sessionadmin.validation import MAX_PROMPT_LENGTH

__all__ = ["MAX_PROMPT_LENGTH", "ComposedPrompt", "DefaultPromptComposer", "PromptComposer", "render", "sha256"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SCOPE_ORDER: dict[str, int] = {"global": 0, "org": 1, "user": 2}


class PromptComposer(Protocol):
    def compose_system_prompt(self, user_id: str, org_id: str, variables: dict[str, Any]) -> str: ...


@dataclass
class ComposedPrompt:
    text: str
    provenance: list[dict[str, Any]] = field(default_factory=list)


def render(template: str, variables: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), template)


SYNTAX_HINT = (
    "Placeholders: {{ name }} is replaced by the session's variable name (letters, digits and _), "
    "given when the session is created; a placeholder with no such variable stays as written. "
    "Single braces such as {org_id} are plain text."
)
_SINGLE_BRACES = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}(?!\})")


def unfilled(text: str) -> list[str]:
    """Placeholders left in a rendered text (no variable of that name), in order, once each."""
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


def single_braces(text: str) -> list[str]:
    """``{name}`` written where ``{{ name }}`` was probably meant."""
    return list(dict.fromkeys(m.group(1) for m in _SINGLE_BRACES.finditer(text)))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_LAYER_COLUMNS = ["id", "scope", "org_id", "user_id", "name", "body", "priority", "version"]


def layers_for(user_id: str, org_id: str) -> list[PromptLayer]:
    """Enabled layers that apply to this user in this org, in composition order (one query).
    Plain SQL because every session create runs it; the same filter in ORM terms is
    ``enabled AND (global OR org=org_id OR (user=user_id AND (org IS NULL OR org=org_id)))``."""
    sql = (
        f"SELECT {', '.join(_LAYER_COLUMNS)} FROM {PromptLayer._meta.db_table} WHERE enabled "
        "AND (scope = 'global' OR (scope = 'org' AND org_id = %s) "
        "OR (scope = 'user' AND user_id = %s AND (org_id IS NULL OR org_id = %s)))"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [org_id, user_id, org_id])
        layers = [PromptLayer.from_db(connection.alias, _LAYER_COLUMNS, row) for row in cursor.fetchall()]
    return sorted(layers, key=lambda layer: (_SCOPE_ORDER[layer.scope], layer.priority, layer.id))


class DefaultPromptComposer:
    """Composes from the PromptLayer rows and the org's own prompt."""

    def compose(self, *, user_id: str, org: Org, variables: dict[str, str]) -> ComposedPrompt:
        parts: list[str] = []
        provenance: list[dict[str, Any]] = []
        org_prompt_done = False
        for layer in layers_for(user_id, org.id):
            if layer.scope != PromptLayer.Scope.GLOBAL and not org_prompt_done:
                org_prompt_done = self._add_org_prompt(org, variables, parts, provenance)
            parts.append(render(layer.body, variables))
            provenance.append(
                {"kind": layer.scope, "id": layer.id, "name": layer.name, "version": layer.version, "sha256": sha256(layer.body)}
            )
        if not org_prompt_done:
            self._add_org_prompt(org, variables, parts, provenance)
        text = "\n\n".join(part.strip() for part in parts if part.strip())
        return ComposedPrompt(text=text, provenance=provenance)

    @staticmethod
    def _add_org_prompt(org: Org, variables: dict[str, str], parts: list[str], provenance: list[dict[str, Any]]) -> bool:
        if org.prompt.strip():
            parts.append(render(org.prompt, variables))
            provenance.append({"kind": "org_prompt", "id": org.id, "name": "org prompt", "sha256": sha256(org.prompt)})
        return True

    def compose_system_prompt(self, user_id: str, org_id: str, variables: dict[str, Any]) -> str:
        """The seed's PromptComposer interface."""
        org = Org.objects.get(pk=org_id)
        strings = {k: str(v) for k, v in variables.items()}
        return self.compose(user_id=user_id, org=org, variables=strings).text
