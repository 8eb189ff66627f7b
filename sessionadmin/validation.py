"""Validation of the platform's external ids and of caller-supplied prompt variables.

Ids end up in filesystem paths (``{root}/{user_id}/{session_id}``), so they are checked against
an allow-list, not merely for emptiness: anything that could climb out of the root, hide in a
path (whitespace, NUL, backslash) or look different on screen (non-ASCII) is refused.
"""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

MAX_ID_LENGTH = 128
# Letters, digits and ._@- ; the first character may not be "." or "-" (and ".." is refused).
ID_PATTERN = f"[A-Za-z0-9_@][A-Za-z0-9._@-]{{0,{MAX_ID_LENGTH - 1}}}"
VARIABLE_NAME_PATTERN = "[A-Za-z_][A-Za-z0-9_]{0,63}"
_ID_RE = re.compile(ID_PATTERN, re.ASCII)
_VAR_NAME_RE = re.compile(VARIABLE_NAME_PATTERN, re.ASCII)
MAX_VARIABLES = 32
MAX_VARIABLE_VALUE_LENGTH = 4096
RESERVED_VARIABLES = frozenset({"user_id", "org_id", "session_id"})
# Why a session ended or was pinned, as operators, tokens and the idle cleanup give it.
MAX_REASON_LENGTH = 500
# An org's prompt and each prompt layer; a session's composed prompt may hold several.
MAX_LAYER_LENGTH = 64 * 1024
MAX_PROMPT_LENGTH = 256 * 1024
# Session limits are at least 1 (NULL means no limit) and at most this; idle timeouts at
# least a minute (a smaller one would end sessions between two heartbeats).
MAX_LIMIT = 10**9
MIN_IDLE_TIMEOUT_SECONDS = 60


def text_problem(value: str) -> str | None:
    """Why free text cannot be stored, or None: a NUL (PostgreSQL refuses it in text and JSON)
    or a lone surrogate (not encodable as UTF-8, so no database takes it)."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def validate_text(value: str) -> None:
    """Django field validator: the model-level twin of ``text_problem``."""
    problem = text_problem(value)
    if problem:
        raise ValidationError(f"This text {problem}.", code="invalid_text")


def validate_reason(value: str) -> None:
    if len(value) > MAX_REASON_LENGTH:
        raise ValidationError(f"A reason is at most {MAX_REASON_LENGTH} characters.", code="too_long")
    validate_text(value)


def id_problem(value: object) -> str | None:
    """Why ``value`` is not an acceptable external id, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if ".." in value:
        return "must not contain '..'"
    if not _ID_RE.fullmatch(value):
        return "may contain only letters, digits and . _ @ - and may not start with . or -"
    return None


def is_valid_id(value: object) -> bool:
    return id_problem(value) is None


def validate_org_id_field(value: str) -> None:
    """Django field validator for org ids (forms and the admin)."""
    problem = id_problem(value)
    if problem:
        raise ValidationError(f"Invalid org id: {problem}.", code="invalid_org_id")


def validate_user_id_field(value: str) -> None:
    problem = id_problem(value)
    if problem:
        raise ValidationError(f"Invalid user id: {problem}.", code="invalid_user_id")


def variables_problem(variables: object) -> str | None:
    """Why a prompt-variables mapping is unacceptable, or None."""
    if variables is None:
        return None
    if not isinstance(variables, dict):
        return "variables must be an object of name -> value"
    if len(variables) > MAX_VARIABLES:
        return f"at most {MAX_VARIABLES} variables are allowed"
    for name, value in variables.items():
        if not isinstance(name, str) or not _VAR_NAME_RE.fullmatch(name):
            return f"variable name {str(name)[:40]!r} must be an identifier of at most 64 characters"
        if name in RESERVED_VARIABLES:
            return f"variable {name!r} is set by sessionadmin and cannot be overridden"
        # bool is an int subclass, so true/false pass here too.
        if not isinstance(value, (str, int, float)):
            return f"variable {name!r} must be a string, a number or a boolean"
        if isinstance(value, float) and not math.isfinite(value):
            return f"variable {name!r} must be a finite number"
        if len(str(value)) > MAX_VARIABLE_VALUE_LENGTH:
            return f"variable {name!r} is longer than {MAX_VARIABLE_VALUE_LENGTH} characters"
        problem = text_problem(value) if isinstance(value, str) else None
        if problem:
            return f"variable {name!r} {problem}"
    return None


def validate_variables(value: object) -> None:
    """Django field validator of AgentSession.variables."""
    problem = variables_problem(value)
    if problem:
        raise ValidationError(f"Invalid variables: {problem}.", code="invalid_variables")


def clean_variables(variables: dict[str, Any] | None) -> dict[str, str]:
    """Normalise checked variables to strings (booleans as true/false)."""
    out: dict[str, str] = {}
    for name, value in (variables or {}).items():
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
