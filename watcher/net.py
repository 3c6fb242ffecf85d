"""The one outbound-URL policy: where the watcher may send requests, and how URLs are shown.

Two kinds of URL (DESIGN.md, "Tombstones, safety and limits"):
- configured: written by the operator (notifier URLs, sendgrid.base_url): https, or plain
  http to a loopback host; `allow_insecure` lifts the https rule for other hosts.
- answered: arriving in answers (errors_url, upload_uri, export urls, redirect targets):
  https only, every redirect hop checked before it is followed, and private, loopback,
  link-local and multicast addresses refused unless `allow_private` (and, for plain http,
  `allow_insecure`).

Every HTTP client the watcher runs is built on this module.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: plain http cannot leak off the machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_url_problem(url: str, *, allow_insecure: bool = False) -> str | None:
    """Why an operator-configured URL may not be used (None: it may)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "expected an https URL"
    if parts.scheme == "http" and not allow_insecure and not is_loopback_host(parts.hostname):
        return "must use https (plain http only to a loopback host, or set allow_insecure: true)"
    return None
