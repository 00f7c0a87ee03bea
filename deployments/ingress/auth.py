"""Bearer tokens of the HTTP ingress: two scopes, and no unauthenticated ingress outside loopback.

* **api** -- calling agents, the pipeline, the OpenAI routes, ``/healthz``, ``/docs``: the API token
  (``$JUSTNEWS_API_TOKEN``) or the admin token.
* **admin** -- ``/stats``, ``/canary`` and every ``/hitl`` route but the reviewers' pages and ``POST /hitl/items``
  (which any API client may use to queue an answer for review by hand): the admin token (``$JUSTNEWS_ADMIN_TOKEN``) only; the API token gets 403. Where
  no admin token is set (allowed on loopback only) the API token stands in for it.
* **reviewer** -- the reviewers' pages (``/hitl/``, ``/hitl/login``, ``/hitl/logout``, ``/hitl/review/...``): no
  bearer token (a browser sends none); :mod:`deployments.review.routes` checks the reviewer's own session cookie
  and each form's CSRF token instead.

With neither token set every route is open, which the ingress accepts only while Serve's HTTP proxy binds a
loopback address (``http_options.host`` 127.0.0.1 / ::1 / localhost, the default). Any other address -- 0.0.0.0, a
LAN address, a host name -- needs both tokens, at least :data:`MIN_TOKEN_CHARS` characters each and different
from one another, or the ingress refuses to start (:class:`InsecureBindingError`, naming the host and the
variables). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

from deployments.errors import ForbiddenError, UnauthorizedError

__all__ = ["Scope", "ADMIN_PATH_PREFIXES", "REVIEWER_PATHS", "API_ROUTES", "MIN_TOKEN_CHARS", "InsecureBindingError", "TokenGuard", "is_loopback",
           "scope_of"]

Scope = Literal["api", "admin", "reviewer"]
ADMIN_PATH_PREFIXES = ("/stats", "/canary", "/hitl")
# The reviewers' pages: exact paths, and prefixes ending in '/'. Everything else under /hitl stays admin.
REVIEWER_PATHS = ("/hitl/", "/hitl/login", "/hitl/logout", "/hitl/review/")
MIN_TOKEN_CHARS = 16


class InsecureBindingError(RuntimeError):
    """The ingress would answer a non-loopback address without (good enough) bearer tokens."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine; a name other than ``localhost`` counts as exposed."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Routes any API client may use inside an admin prefix: queueing an item for review by hand.
API_ROUTES = (("POST", "/hitl/items"),)


def scope_of(path: str, method: str = "GET") -> Scope:
    """The scope a request (its path and method) needs."""
    if (method.upper(), path) in API_ROUTES:
        return "api"
    if any(path == p or (p.endswith("/") and len(p) > len("/hitl/") and path.startswith(p)) for p in REVIEWER_PATHS):
        return "reviewer"
    return "admin" if any(path == p or path.startswith(p + "/") for p in ADMIN_PATH_PREFIXES) else "api"


def _bearer(header: str | None) -> str | None:
    scheme, _, given = (header or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def _same(given: str | None, token: str | None) -> bool:
    return given is not None and token is not None and hmac.compare_digest(given.encode(), token.encode())


@dataclass(frozen=True)
class TokenGuard:
    """The ingress' tokens (read once from the environment) and the checks on them."""

    api_token: str | None
    admin_token: str | None
    api_env: str = "JUSTNEWS_API_TOKEN"
    admin_env: str = "JUSTNEWS_ADMIN_TOKEN"

    @classmethod
    def from_env(cls, api_env: str, admin_env: str, environ: Mapping[str, str] | None = None) -> "TokenGuard":
        env = os.environ if environ is None else environ
        return cls(env.get(api_env) or None, env.get(admin_env) or None, api_env, admin_env)

    @property
    def open(self) -> bool:
        """No token configured: every route answers anyone who can reach it."""
        return self.api_token is None and self.admin_token is None

    def check_binding(self, hosts: Iterable[str | None]) -> None:
        """Refuse to serve a non-loopback address without two distinct, long enough tokens.

        Args:
            hosts: the addresses the HTTP proxy binds (None: no proxy starts, nothing is exposed).

        Raises:
            InsecureBindingError: what is missing, naming the host and the environment variables.
        """
        problems = []
        if self.api_token and self.api_token == self.admin_token:
            problems.append(f"${self.admin_env} must differ from ${self.api_env} (or the scopes mean nothing)")
        exposed = [h for h in hosts if h is not None and not is_loopback(h)]
        if exposed:
            for env, token in ((self.api_env, self.api_token), (self.admin_env, self.admin_token)):
                if token is None:
                    problems.append(f"${env} is unset or empty")
                elif len(token) < MIN_TOKEN_CHARS:
                    problems.append(f"${env} has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}")
        if not problems:
            return
        where = (f"Serve's HTTP proxy binds {exposed[0]!r} (http_options.host), which is not loopback, so "
                 if exposed else "")
        raise InsecureBindingError(
            f"refusing to start the ingress: {where}{'; '.join(problems)}. Set ${self.api_env} (agent calls) and "
            f"${self.admin_env} (/stats, /canary, /hitl) to two different secrets, e.g. `openssl rand -hex 32`, in "
            "the environment that starts the cluster" + (", or bind http_options.host: 127.0.0.1" if exposed else ""))

    def authorize(self, header: str | None, scope: Scope = "api", path: str = "") -> None:
        """Check ``Authorization: Bearer <token>`` for a route of ``scope``.

        Raises:
            UnauthorizedError: no token, or one the ingress does not know (401).
            ForbiddenError: the API token on an admin route while an admin token is configured (403).
        """
        if self.open or scope == "reviewer":  # reviewer pages check their own session (hitl_routes)
            return
        given = _bearer(header)
        if scope == "admin":
            if _same(given, self.admin_token or self.api_token):
                return
            if self.admin_token is not None and _same(given, self.api_token):
                raise ForbiddenError(f"{path or 'this route'} needs the admin token (${self.admin_env} of the "
                                     f"cluster); the API token (${self.api_env}) only calls agents")
        elif _same(given, self.api_token) or _same(given, self.admin_token):
            return
        env = self.admin_env if scope == "admin" and self.admin_token else self.api_env
        raise UnauthorizedError(("missing" if given is None else "wrong") + " bearer token: send 'Authorization: "
                                f"Bearer <token>' (the token is ${env} of the cluster)")
