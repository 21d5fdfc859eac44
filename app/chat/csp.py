"""Content-Security-Policy: what a page of ours may load and run.

Django 5.2 has no CSP support of its own, and there is one page: the index view
sets its policy with a fresh nonce (``page_policy``), and this middleware gives
every other response (the JSON API, Django's error pages) a policy that allows
nothing at all.
"""

import secrets

from django.utils.deprecation import MiddlewareMixin

# Everything else the page needs comes from its own origin: fetch("/api/…") and its
# WebSocket (CSP Level 3: 'self' in connect-src matches ws: and wss: to the same
# host, which tests/test_browser.py checks). data: images: the page's empty favicon
# (<link rel="icon" href="data:,">), which saves a request for /favicon.ico.
PAGE_POLICY = (
    "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
    "connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DEFAULT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def new_nonce() -> str:
    """A nonce for one response: 128 random bits, URL-safe (fits an HTML attribute as is)."""
    return secrets.token_urlsafe(16)


def page_policy(nonce: str) -> str:
    return PAGE_POLICY.format(nonce=nonce)


class DefaultPolicyMiddleware(MiddlewareMixin):
    """Every response carries a policy: the view's own, else one that allows nothing."""

    def process_response(self, request, response):
        response.headers.setdefault("Content-Security-Policy", DEFAULT_POLICY)
        return response
