"""Django admin: auditors read the trail here; operators manage orgs, prompts and the catalog.
Session status never changes by editing a row: only through the manager."""

from django.contrib import admin  # noqa: F401

# --- Orgs, prompt layers, sessions, audit entries -------------------------------------------

# --- MCP servers and clients ----------------------------------------------------------------

# --- Maintenance runs -----------------------------------------------------------------------

# --- API tokens -----------------------------------------------------------------------------
