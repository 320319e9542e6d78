"""Moved to `rbacbridge.config.tenant_edits` (`rbacbridge tenant add/remove/list`); this name stays for the CLI."""

from rbacbridge.config.tenant_edits import Edit, add, remove, rows

__all__ = ["Edit", "add", "remove", "rows"]
