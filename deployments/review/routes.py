"""The ``/hitl`` routes: the reviewers' pages (cookie session) and the admin JSON API (bearer admin token).

Reviewers' pages -- ``GET /hitl/`` (queue, filters ``agent``, ``reason``, ``age``), ``/hitl/login``,
``/hitl/logout``, ``/hitl/review/{id}`` (+ ``/claim``, ``/release``, ``/decide``) -- are outside the bearer-token
scopes (``deployments.ingress.auth`` gives them the ``reviewer`` scope) and check the reviewer's session and,
on every POST, its CSRF token here. The JSON API stays in the admin scope:

* ``POST /hitl/items``: queue an item by hand (``{agent, input, output, answered_by?, step?, reasons?, note?}``;
  input and output are validated against the agent's contract) -> 201 ``{id, state}``.
* ``GET /hitl/items`` (``agent``, ``reason``, ``state``, ``older_than_s``, ``limit``), ``GET /hitl/items/{id}``.
* ``POST /hitl/items/{id}/decision``: ``{reviewer, action: approve|reject|correct, output?, note?}``.
* ``GET /hitl/stats``: items per state, queue depth and oldest age per agent.
* ``GET /hitl/articles/{article_id}``: whether a pipeline run holds the article, and each held step's item.

A claim conflict is 409 naming the holder, a correction off the contract 400, a database outage 503; none
of it touches the agent routes.
"""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Callable, Literal
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, RedirectResponse, Response

from agent_graph import get_spec
from agent_graph.errors import AgentGraphError
from deployments.errors import (CsrfError, InvalidRequestError, ReviewConflictError, ReviewItemNotFoundError,
                                ReviewQueueUnavailableError, ServeError, UnauthorizedError)
from deployments.review.auth import LOGIN_COOKIE, SESSION_COOKIE, Reviewers, Sessions
from deployments.review.pages import AGES, item_page, login_page, queue_page
from hitl import ClaimConflict, HeldStep, InvalidDecision, ItemNotFound, NewItem, ReviewStore
from hitl.models import Item

log = logging.getLogger(__name__)

__all__ = ["HitlService", "install_hitl", "build_hitl_app", "item_json"]

# Item ids are SQLite INTEGERs (int64); ages beyond ten years name no item (and overflow datetime arithmetic).
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The item's id.")]
MAX_AGE_S = 10 * 365 * 86_400


class HitlService:
    """What the routes need: the store (opened on first use), reviewers, sessions, metrics.

    Args:
        store: a ReviewStore, or a factory called on first use (the ingress starts with the database down).
        agents: agents whose items may be queued by hand (default: every registered contract).
        reviewers: who may log in (default ``$JUSTNEWS_HITL_REVIEWERS``).
        on_decision: called ``(agent, state)`` per decision (the decisions metric).
    """

    def __init__(self, store: ReviewStore | Callable[[], ReviewStore], *, agents: list[str] | None = None,
                 reviewers: Reviewers | None = None, secret: str | None = None,
                 on_decision: Callable[[str, str], None] | None = None):
        from agent_graph import agent_names

        self._factory = store if callable(store) and not isinstance(store, ReviewStore) else (lambda: store)
        self._store: ReviewStore | None = None
        self._lock = threading.Lock()
        self.agents = sorted(agents if agents is not None else agent_names())
        self.reviewers = reviewers if reviewers is not None else Reviewers.from_env()
        self.sessions = Sessions(self.reviewers, secret)
        self._on_decision = on_decision
        self._holds = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-holds")
        self.hold_failures = 0

    def hold_later(self, article_id: str, steps: list[HeldStep]) -> None:
        """Record a pipeline's hold off the request path; a database outage is logged and counted."""
        def write() -> None:
            try:
                self.store.hold(article_id, steps)
            except Exception as exc:  # noqa: BLE001 - the article was answered; only the hold record is lost
                self.hold_failures += 1
                log.warning("hitl: hold of article %r not recorded: %s", article_id, str(exc).splitlines()[0][:200])
        self._holds.submit(write)

    @property
    def store(self) -> ReviewStore:
        with self._lock:
            if self._store is None:
                self._store = self._factory()
            return self._store

    def call(self, fn: Callable[[ReviewStore], Any]) -> Any:
        """Run ``fn(store)``, mapping the store's errors onto HTTP errors."""
        try:
            return fn(self.store)
        except ItemNotFound as exc:
            raise ReviewItemNotFoundError(str(exc)) from None
        except ClaimConflict as exc:
            raise ReviewConflictError(str(exc)) from None
        except InvalidDecision as exc:
            raise InvalidRequestError(str(exc)) from None
        except ServeError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's OperationalError and friends
            raise ReviewQueueUnavailableError(f"the review queue is unavailable: "
                                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

    def decide(self, item_id: int, reviewer: str, action: str, correction: Any = None, note: str | None = None) -> Item:
        item = self.call(lambda s: s.decide(item_id, reviewer, action, correction=correction, note=note))
        if self._on_decision is not None:
            self._on_decision(item.agent, item.state)
        return item


def item_json(item: Item, audit: bool = False) -> dict[str, Any]:
    """An item as the API returns it."""
    t = (lambda v: v.isoformat() + "Z" if v else None)
    out = {"id": item.id, "agent": item.agent, "state": item.state, "reasons": item.reasons, "source": item.source,
           "input": item.input, "output": item.output, "answered_by": item.answered_by, "step": item.step,
           "pool": item.pool, "claimed_by": item.claimed_by, "claim_expires_at": t(item.claim_expires_at),
           "decided_by": item.decided_by, "decided_at": t(item.decided_at), "correction": item.correction,
           "note": item.note, "created_at": t(item.created_at)}
    if audit:
        out["audit"] = [{"at": t(e.at), "actor": e.actor, "action": e.action, "detail": e.detail} for e in item.audit]
    return out


class QueueItemRequest(BaseModel):
    """``POST /hitl/items``: an input and answer to put before a reviewer."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="The agent whose contract the input and output follow.")
    input: dict[str, Any] = Field(description="The agent's input.")
    output: dict[str, Any] = Field(description="The answer to review (valid against the agent's output contract).")
    answered_by: str | None = Field(None, max_length=300, description="Adapter ref, base ref or legacy id.")
    step: Literal["adapter", "base", "legacy"] | None = Field(None, description="Fallback step that answered.")
    reasons: list[str] = Field(default_factory=lambda: ["manual"], min_length=1, max_length=6,
                               description="Why it is queued (default 'manual').")
    note: str | None = Field(None, max_length=2000, description="A note for the reviewer.")


class DecisionRequest(BaseModel):
    """``POST /hitl/items/{id}/decision``."""

    model_config = ConfigDict(extra="forbid")

    reviewer: str = Field(min_length=1, max_length=64, description="Who decides (recorded in the audit trail).")
    action: Literal["approve", "reject", "correct"] = Field(description="The decision.")
    output: dict[str, Any] | None = Field(None, description="The corrected answer (action 'correct').")
    note: str | None = Field(None, max_length=2000, description="Why.")


def _api(router: APIRouter, svc: HitlService) -> None:
    @router.post("/items", status_code=201, tags=["hitl"], summary="Queue an input and answer for review by hand.")
    async def queue_item(req: QueueItemRequest) -> dict[str, Any]:
        try:
            spec = get_spec(req.agent)
            inp = spec.load_input(req.input)
            out = spec.validate_output(req.output, inp)
        except AgentGraphError as exc:
            raise InvalidRequestError(str(exc)) from None
        item = NewItem(agent=req.agent, input=inp.model_dump(mode="json"), output=out.model_dump(mode="json"),
                       reasons=tuple(req.reasons), answered_by=req.answered_by, step=req.step, source="manual",
                       note=req.note)
        item_id = svc.call(lambda s: s.enqueue(item, actor="api"))
        return {"id": item_id, "state": "pending"}

    @router.get("/items", tags=["hitl"], summary="Items, oldest first.")
    async def list_items(agent: str | None = None, reason: str | None = None,
                         state: list[str] | None = Query(None),
                         older_than_s: float | None = Query(None, ge=0, le=MAX_AGE_S),
                         limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        items = svc.call(lambda s: s.list(agent=agent, reason=reason, states=state, older_than_s=older_than_s,
                                          limit=limit))
        return {"items": [item_json(i) for i in items]}

    @router.get("/items/{item_id}", tags=["hitl"], summary="One item with its audit trail.")
    async def get_item(item_id: ItemId) -> dict[str, Any]:
        return item_json(svc.call(lambda s: s.get(item_id, audit=True)), audit=True)

    @router.post("/items/{item_id}/decision", tags=["hitl"], summary="Approve, reject or correct an item.")
    async def decide(item_id: ItemId, req: DecisionRequest) -> dict[str, Any]:
        item = svc.decide(item_id, req.reviewer, req.action, req.output if req.action == "correct" else None, req.note)
        return item_json(svc.call(lambda s: s.get(item.id, audit=True)), audit=True)

    @router.get("/stats", tags=["hitl"], summary="Items per state; queue depth and oldest age per agent.")
    async def stats() -> dict[str, Any]:
        return svc.call(lambda s: {"states": s.counts(), "queue": s.queue_stats()})

    @router.get("/articles/{article_id}", tags=["hitl"], summary="Whether review holds an article, step by step.")
    async def article(article_id: str) -> dict[str, Any]:
        return svc.call(lambda s: s.article(article_id))


class _Page:
    """Per-request helpers of the reviewers' pages."""

    def __init__(self, svc: HitlService, request: Request):
        self.svc, self.request = svc, request
        self.base = request.scope.get("root_path", "").rstrip("/") + "/hitl"
        self.cookie = request.cookies.get(SESSION_COOKIE)
        self.reviewer = svc.sessions.verify(self.cookie)
        self.nonce = secrets.token_urlsafe(12)

    @property
    def csrf(self) -> str:
        return self.svc.sessions.csrf(self.cookie or "")

    def html(self, body: str, status: int = 200) -> HTMLResponse:
        resp = HTMLResponse(body, status_code=status)
        resp.headers["Content-Security-Policy"] = (f"default-src 'none'; script-src 'nonce-{self.nonce}'; style-src "
                                                   f"'nonce-{self.nonce}'; form-action 'self'; frame-ancestors 'none'; "
                                                   "base-uri 'none'")
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    def redirect(self, path: str, **query: str) -> RedirectResponse:
        qs = "&".join(f"{k}={quote(v)}" for k, v in query.items() if v)
        return RedirectResponse(f"{self.base}{path}" + (f"?{qs}" if qs else ""), status_code=303)

    async def form(self) -> dict[str, str]:
        """The urlencoded form body; raises unless its CSRF token is this session's."""
        raw = (await self.request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if self.reviewer is None:
            raise UnauthorizedError("log in at /hitl/login first (reviewer session missing or expired)")
        if not self.svc.sessions.check_csrf(self.cookie, form.get("csrf")):
            raise CsrfError("the form's CSRF token does not match this session; reload the page and try again")
        return form

    def cookie_args(self) -> dict[str, Any]:
        return {"path": self.base, "httponly": True, "samesite": "strict", "secure": self.request.url.scheme == "https"}


def _pages(router: APIRouter, svc: HitlService) -> None:
    @router.get("/login", include_in_schema=False)
    async def login_form(request: Request, error: str | None = None) -> Response:
        page = _Page(svc, request)
        nonce = svc.sessions.login_nonce()
        resp = page.html(login_page(base=page.base, nonce=page.nonce, login_csrf=nonce, error=error,
                                    configured=bool(svc.reviewers.tokens)))
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **page.cookie_args())
        return resp

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        page = _Page(svc, request)
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        expected = request.cookies.get(LOGIN_COOKIE)
        if not expected or not secrets.compare_digest(expected, form.get("csrf", "")):
            return page.redirect("/login", error="The login form expired; please try again.")
        name = form.get("name", "").strip()
        if not svc.reviewers.check(name, form.get("token", "")):
            return page.redirect("/login", error="Unknown reviewer or wrong token.")
        resp = page.redirect("/")
        resp.set_cookie(SESSION_COOKIE, svc.sessions.issue(name), max_age=int(svc.sessions.ttl_s), **page.cookie_args())
        resp.delete_cookie(LOGIN_COOKIE, path=page.base)
        return resp

    @router.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        page = _Page(svc, request)
        await page.form()
        resp = page.redirect("/login")
        resp.delete_cookie(SESSION_COOKIE, path=page.base)
        return resp

    @router.get("/", include_in_schema=False)
    async def queue(request: Request, agent: str = "", reason: str = "", age: str = "", done: str = "",
                    error: str = "") -> Response:
        page = _Page(svc, request)
        if page.reviewer is None:
            return page.redirect("/login")
        older, newer = AGES.get(age, (None, None))
        items = svc.call(lambda s: s.list(agent=agent or None, reason=reason or None, states=("pending", "claimed"),
                                          older_than_s=older, newer_than_s=newer, limit=500))
        return page.html(queue_page(items, base=page.base, reviewer=page.reviewer, csrf=page.csrf, nonce=page.nonce,
                                    agents=svc.agents, filters={"agent": agent, "reason": reason, "age": age},
                                    ok=done or None, err=error or None))

    @router.get("/review/{item_id}", include_in_schema=False)
    async def review(request: Request, item_id: ItemId) -> Response:
        page = _Page(svc, request)
        if page.reviewer is None:
            return page.redirect("/login")
        return _item(page, item_id)

    async def _claim_or_release(request: Request, item_id: int, what: str) -> Response:
        page = _Page(svc, request)
        await page.form()
        try:
            svc.call(lambda s: getattr(s, what)(item_id, page.reviewer))
        except (ReviewConflictError, ReviewItemNotFoundError) as exc:
            return page.redirect("/", error=str(exc))
        return page.redirect(f"/review/{item_id}") if what == "claim" else \
            page.redirect("/", done=f"Item {item_id} released.")

    @router.post("/review/{item_id}/claim", include_in_schema=False)
    async def claim(request: Request, item_id: ItemId) -> Response:
        return await _claim_or_release(request, item_id, "claim")

    @router.post("/review/{item_id}/release", include_in_schema=False)
    async def release(request: Request, item_id: ItemId) -> Response:
        return await _claim_or_release(request, item_id, "release")

    @router.post("/review/{item_id}/decide", include_in_schema=False)
    async def decide(request: Request, item_id: ItemId) -> Response:
        page = _Page(svc, request)
        form = await page.form()
        action = form.get("action", "")
        try:
            item = svc.decide(item_id, page.reviewer, action,
                              correction=form.get("correction") if action == "correct" else None,
                              note=form.get("note") or None)
        except InvalidRequestError as exc:
            return _item(page, item_id, err=str(exc), draft=form.get("correction"), status=400)
        except (ReviewConflictError, ReviewItemNotFoundError) as exc:
            return page.redirect("/", error=str(exc))
        return page.redirect("/", done=f"Item {item_id} {item.state}.")


def _item(page: _Page, item_id: int, err: str | None = None, draft: str | None = None, status: int = 200) -> Response:
    try:
        item = page.svc.call(lambda s: s.get(item_id, audit=True))
    except ReviewItemNotFoundError as exc:
        return page.redirect("/", error=str(exc))
    schema = get_spec(item.agent).json_schema() if item.agent in page.svc.agents else None
    return page.html(item_page(item, base=page.base, reviewer=page.reviewer, csrf=page.csrf, nonce=page.nonce,
                               err=err, draft=draft, schema=schema), status)


def install_hitl(app: FastAPI, svc: HitlService) -> None:
    """Add the ``/hitl`` routes to ``app`` (the ingress' app, or a standalone one)."""
    router = APIRouter(prefix="/hitl")
    _api(router, svc)
    _pages(router, svc)
    app.include_router(router)
    server = getattr(app.state, "ingress", None)  # the ingress' pipeline records its review holds here
    if server is not None:
        server.on_held = svc.hold_later


def build_hitl_app(svc: HitlService) -> FastAPI:
    """A standalone app of the HITL routes with the ingress' JSON error handlers (tests, a separate server)."""
    from deployments.ingress.http_errors import install_error_handlers

    app = FastAPI(title="JustNews review", version="0.1.0")
    install_error_handlers(app, 1)
    install_hitl(app, svc)
    return app
