"""The outbound-URL policy's pure rules: configured URLs, answered URLs, addresses, masking."""

from __future__ import annotations

import pytest

from watcher.net import (
    OutboundPolicy,
    OutboundRefused,
    address_problem,
    base_url_problem,
    configured_url_problem,
    mask_url,
    mask_urls_in_text,
    shown_url,
)


@pytest.mark.parametrize(
    ("url", "allow_insecure", "ok"),
    [
        ("https://hooks.example.com/x", False, True),
        ("http://127.0.0.1:8080/x", False, True),
        ("http://localhost/x", False, True),
        ("http://[::1]:9/x", False, True),
        ("http://example.com/x", False, False),
        ("http://example.com/x", True, True),
        ("ftp://example.com/x", True, False),
        ("https:///nohost", False, False),
    ],
)
def test_configured_urls(url: str, allow_insecure: bool, ok: bool) -> None:
    """https anywhere, plain http only to loopback unless allow_insecure, nothing else."""
    assert ok == (configured_url_problem(url, allow_insecure=allow_insecure) is None)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api.sendgrid.com", None),
        ("https://api.eu.sendgrid.com/", None),
        ("http://127.0.0.1:8025", None),
        ("http://sendgrid.example.com", "must use https"),
        ("https://api.sendgrid.com/v3", "must not end in /v3"),
        ("https://api.sendgrid.com/v3/", "must not end in /v3"),
        ("https://proxy.example.com/sendgrid/V3", "must not end in /v3"),
        ("https://user:pw@api.sendgrid.com", "must not contain a user name or password"),
        ("https://api.sendgrid.com/?x=1", "must not have a query"),
    ],
)
def test_base_url_problem(url: str, problem: str | None) -> None:
    """A SendGrid base URL is a configured URL without /v3, credentials or a query."""
    found = base_url_problem(url, allow_insecure=False)

    assert (problem is None) == (found is None), found
    if problem is not None:
        assert found is not None and found.startswith(problem)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("fd00::1", "private"),
    ],
)
def test_address_problem(address: str, kind: str | None) -> None:
    """Only global unicast addresses pass; every other kind is named."""
    assert kind == address_problem(address)


@pytest.mark.parametrize(
    ("url", "policy", "problem"),
    [
        ("https://errors.example.com/e.csv?sig=x", OutboundPolicy(), None),
        ("http://errors.example.com/e.csv", OutboundPolicy(), "only https URLs are read"),
        ("http://errors.example.com/e.csv", OutboundPolicy(allow_insecure=True), None),
        ("https://127.0.0.1/e.csv", OutboundPolicy(), "loopback address"),
        ("https://[::ffff:10.0.0.1]/e.csv", OutboundPolicy(), "private address"),
        ("https://localhost/e.csv", OutboundPolicy(), "loopback host"),
        ("https://db.localhost/e.csv", OutboundPolicy(), "loopback host"),
        ("https://notlocalhost.example/e.csv", OutboundPolicy(), None),
        ("https://127.0.0.1/e.csv", OutboundPolicy(allow_private=True), None),
        ("https://2130706433/e.csv", OutboundPolicy(allow_private=True), "not a canonical IP address"),
        ("https://127.1/e.csv", OutboundPolicy(), "not a canonical IP address"),
        ("file:///etc/passwd", OutboundPolicy(True, True), "only https URLs are read"),
    ],
)
def test_answered_urls(url: str, policy: OutboundPolicy, problem: str | None) -> None:
    """Answered URLs: https only, and no non-public address literal or loopback name unless allowed."""
    found = policy.answered_url_problem(url)

    assert (problem is None) == (found is None), found
    if problem is not None:
        assert found is not None and found.startswith(problem)


def test_check_answered_raises_without_the_query() -> None:
    """A refusal names the URL without its query (signed links carry tokens there)."""
    with pytest.raises(OutboundRefused) as caught:
        OutboundPolicy().check_answered("http://u:pw@errors.example.com/e.csv?token=TOKEN123")

    assert "refusing http://errors.example.com/e.csv: only https URLs are read" == str(caught.value).split(" (")[0]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pass@hooks.example.com/x", "https://***@hooks.example.com/x"),
        ("https://hooks.example.com/x?a=1&token=t0k", "https://hooks.example.com/x?a=1&token=***"),
        (
            "https://b.s3.amazonaws.com/e.csv?X-Amz-Credential=AK&X-Amz-Signature=ff&x=y",
            "https://b.s3.amazonaws.com/e.csv?X-Amz-Credential=***&X-Amz-Signature=***&x=y",
        ),
        ("https://h/x?api_key=k&sig=s&password=p", "https://h/x?api_key=***&sig=***&password=***"),
        ("https://h/x?page=2", "https://h/x?page=2"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """Userinfo and secret query values are masked; the rest is kept to be useful."""
    assert masked == mask_url(url)


def test_mask_urls_in_text_and_shown_url() -> None:
    """URLs inside free text are masked in place; shown_url drops userinfo and query."""
    text = "POST https://u:CANARY@h.example.com/hook?key=CANARY2 failed: 'http://x/y?token=CANARY3'"

    masked = mask_urls_in_text(text)

    assert "POST https://***@h.example.com/hook?key=*** failed: 'http://x/y?token=***'" == masked
    assert "https://h.example.com:8443/…" == shown_url("https://u:CANARY@h.example.com:8443/p?q=1")
