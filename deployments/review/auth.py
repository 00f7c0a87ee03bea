"""Reviewer login for the HITL pages: reviewer tokens of their own, signed cookie sessions, CSRF tokens.

Reviewers are not API clients: they log in once with their own token (``$JUSTNEWS_HITL_REVIEWERS``,
``name:token`` pairs separated by commas, each token at least 16 characters, none equal to the API or admin
token) and get a session cookie (HttpOnly, SameSite=Strict, path ``/hitl``) signed with HMAC-SHA256. The
signature covers a fingerprint of the reviewer's token, so removing or changing a token ends its sessions.
Every form post carries a CSRF token derived from the session (login: a double-submit cookie). The signing
key is ``$JUSTNEWS_HITL_SECRET`` (set it when several ingress replicas share sessions), else derived from
the reviewers' tokens. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Mapping

from hitl.errors import ReviewerConfigError

__all__ = ["REVIEWERS_ENV", "SECRET_ENV", "SESSION_COOKIE", "LOGIN_COOKIE", "MIN_REVIEWER_TOKEN_CHARS", "Reviewers",
           "Sessions"]

REVIEWERS_ENV = "JUSTNEWS_HITL_REVIEWERS"
SECRET_ENV = "JUSTNEWS_HITL_SECRET"
SESSION_COOKIE = "justnews_hitl_session"
LOGIN_COOKIE = "justnews_hitl_login"
MIN_REVIEWER_TOKEN_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Reviewers:
    """Reviewer name -> token."""

    tokens: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | None, *, forbidden: tuple[str | None, ...] = ()) -> "Reviewers":
        """Read ``name:token[,name:token...]``.

        Raises:
            ReviewerConfigError: a malformed entry, a short or shared token, or one equal to a bearer token
                (the message names the reviewer, never the token).
        """
        tokens: dict[str, str] = {}
        for n, raw in enumerate(p.strip() for p in (spec or "").split(",")):
            if not raw:
                continue
            name, sep, token = raw.partition(":")
            name, token = name.strip(), token.strip()
            where = f"${REVIEWERS_ENV} entry {n + 1}"
            if not sep or not _NAME.fullmatch(name):
                raise ReviewerConfigError(f"{where}: expected name:token with a name of letters, digits, '_.-'")
            if name in tokens:
                raise ReviewerConfigError(f"{where}: reviewer {name!r} is listed twice")
            if len(token) < MIN_REVIEWER_TOKEN_CHARS:
                raise ReviewerConfigError(f"{where}: the token of {name!r} has {len(token)} characters, fewer than "
                                          f"{MIN_REVIEWER_TOKEN_CHARS}")
            if token in tokens.values():
                raise ReviewerConfigError(f"{where}: {name!r} shares a token with another reviewer")
            if any(f and _same(token, f) for f in forbidden):
                raise ReviewerConfigError(f"{where}: the token of {name!r} equals an API/admin bearer token; reviewer "
                                          "tokens must be their own")
            tokens[name] = token
        return cls(tokens)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Reviewers":
        env = os.environ if environ is None else environ
        return cls.parse(env.get(REVIEWERS_ENV), forbidden=(env.get("JUSTNEWS_API_TOKEN"),
                                                            env.get("JUSTNEWS_ADMIN_TOKEN")))

    def check(self, name: str, token: str) -> bool:
        """Whether ``token`` is ``name``'s (constant time in the token)."""
        expected = self.tokens.get(name)
        ok = _same(token or "", expected or secrets.token_hex(16))
        return expected is not None and ok

    def fingerprint(self, name: str) -> str | None:
        token = self.tokens.get(name)
        return hashlib.sha256(token.encode()).hexdigest()[:16] if token is not None else None


class Sessions:
    """Signed session cookies and CSRF tokens.

    Args:
        reviewers: who may log in.
        secret: the signing key; None: ``$JUSTNEWS_HITL_SECRET``, else derived from the reviewers' tokens.
        ttl_s: how long a session lasts.
    """

    def __init__(self, reviewers: Reviewers, secret: str | None = None, ttl_s: float = 8 * 3600):
        self.reviewers = reviewers
        secret = secret or os.environ.get(SECRET_ENV)
        if not secret:
            secret = "justnews-hitl|" + "|".join(f"{n}={t}" for n, t in sorted(reviewers.tokens.items()))
        self._key = hashlib.sha256(secret.encode()).digest()
        self.ttl_s = ttl_s

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    def issue(self, name: str, now: float | None = None) -> str:
        """A session cookie value for ``name``."""
        exp = str(int((now or time.time()) + self.ttl_s))
        return f"{name}:{exp}:{self._sign('session', name, exp, self.reviewers.fingerprint(name) or '')}"

    def verify(self, cookie: str | None, now: float | None = None) -> str | None:
        """The reviewer of a valid, unexpired session cookie whose token still stands; else None."""
        name, _, rest = (cookie or "").partition(":")
        exp, _, sig = rest.partition(":")
        fp = self.reviewers.fingerprint(name)
        if fp is None or not exp.isdigit() or int(exp) < (now or time.time()):
            return None
        return name if _same(sig, self._sign("session", name, exp, fp)) else None

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session."""
        return self._sign("csrf", cookie)[:32]

    def check_csrf(self, cookie: str | None, given: str | None) -> bool:
        return bool(cookie) and bool(given) and _same(self.csrf(cookie), given)  # type: ignore[arg-type]

    @staticmethod
    def login_nonce() -> str:
        """A random value for the login form's double-submit cookie."""
        return secrets.token_urlsafe(24)
