"""The web console: server-rendered pages (Jinja2, htmx) for service agents, analysts, auditors and admins."""
