"""The reviewers' pages, server-rendered: login, the queue with filters, one item side by side.

Plain HTML with one small inline script (a nonce'd CSP allows only it): the JSON editor checks the syntax as
the reviewer types and refuses to submit text that is not JSON; the server checks the agent's contract. No
build step, no external asset. Every value shown is escaped.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any, Iterable

from hitl.models import Item, utcnow
from hitl.store import REASONS

__all__ = ["AGES", "login_page", "queue_page", "item_page", "age_text"]

# Queue filter "age": label -> (older_than_s, newer_than_s)
AGES: dict[str, tuple[float | None, float | None]] = {
    "": (None, None), "lt1h": (None, 3600), "gt5m": (300, None), "gt1h": (3600, None), "gt1d": (86400, None)}
_AGE_LABELS = {"": "any age", "lt1h": "queued < 1 h ago", "gt5m": "waiting > 5 min", "gt1h": "waiting > 1 h",
               "gt1d": "waiting > 1 day"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#1d3557;color:#fff;padding:.6em 1.2em;display:flex;justify-content:space-between;align-items:center}
header a,header button{color:#fff}
header button{background:transparent;border:1px solid #fff;border-radius:3px}
main{padding:1em 1.2em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
.msg{padding:.5em .8em;margin:.5em 0;border-radius:4px}
.ok{background:#e3f4e1}.err{background:#fbe3e1;color:#8a1c12}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}
pre{background:#fff;border:1px solid #ddd;padding:.6em;white-space:pre-wrap;word-break:break-word;margin:0}
textarea{width:100%;min-height:14em;font:13px monospace}
.tag{display:inline-block;background:#e8ecf4;border-radius:3px;padding:0 .4em;margin-right:.2em}
form.inline{display:inline}
button{cursor:pointer}
"""

_SCRIPT = """
(function(){
  var ed=document.getElementById('correction'); if(!ed) return;
  var st=document.getElementById('json-status'), form=document.getElementById('correct-form');
  function check(){ try{ JSON.parse(ed.value); st.textContent='JSON ok'; st.className='ok'; return true; }
    catch(e){ st.textContent='Not JSON: '+e.message; st.className='err'; return false; } }
  ed.addEventListener('input', check);
  document.getElementById('format').addEventListener('click', function(){
    if(check()) ed.value=JSON.stringify(JSON.parse(ed.value), null, 2); });
  form.addEventListener('submit', function(ev){ if(!check()){ ev.preventDefault(); ed.focus(); } });
  check();
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def age_text(t: datetime | None, now: datetime | None = None) -> str:
    """``42 s``, ``7 min``, ``3.5 h``, ``2.0 d``."""
    if t is None:
        return "?"
    s = max(((now or utcnow()) - t).total_seconds(), 0)
    return f"{s:.0f} s" if s < 60 else f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.1f} h" if s < 86400 \
        else f"{s / 86400:.1f} d"


def _page(title: str, body: str, *, base: str, reviewer: str | None = None, csrf: str | None = None,
          nonce: str = "", script: bool = False) -> str:
    who = ""
    if reviewer:
        who = (f'<span>Signed in as <b id="reviewer">{_e(reviewer)}</b> '
               f'<form class="inline" method="post" action="{base}/logout"><input type="hidden" name="csrf" '
               f'value="{_e(csrf)}"><button type="submit">Log out</button></form></span>')
    js = f'<script nonce="{_e(nonce)}">{_SCRIPT}</script>' if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} - JustNews review'
            f'</title><style nonce="{_e(nonce)}">{_CSS}</style></head><body><header><a href="{base}/">'
            f'<b>JustNews review</b></a>{who}</header><main>{body}</main>{js}</body></html>')


def _messages(ok: str | None, err: str | None) -> str:
    return (f'<p class="msg ok" id="flash">{_e(ok)}</p>' if ok else "") + \
           (f'<p class="msg err" id="error">{_e(err)}</p>' if err else "")


def login_page(*, base: str, nonce: str, login_csrf: str, error: str | None = None, configured: bool = True) -> str:
    if not configured:
        body = ('<h1>Review login</h1><p class="msg err" id="error">No reviewers are configured: set '
                '<code>JUSTNEWS_HITL_REVIEWERS=name:token,...</code> in the environment that starts the cluster.</p>')
    else:
        body = (f'<h1>Review login</h1>{_messages(None, error)}<form method="post" action="{base}/login">'
                f'<input type="hidden" name="csrf" value="{_e(login_csrf)}">'
                '<p><label>Reviewer <input name="name" id="name" autocomplete="username" required></label></p>'
                '<p><label>Token <input name="token" id="token" type="password" autocomplete="current-password" '
                'required></label></p><p><button type="submit" id="login">Log in</button></p></form>')
    return _page("Login", body, base=base, nonce=nonce)


def _options(values: Iterable[str], chosen: str, labels: dict[str, str] | None = None) -> str:
    return "".join(f'<option value="{_e(v)}"{" selected" if v == chosen else ""}>{_e((labels or {}).get(v, v) or "any")}'
                   f'</option>' for v in values)


def queue_page(items: list[Item], *, base: str, reviewer: str, csrf: str, nonce: str, agents: list[str],
               filters: dict[str, str], ok: str | None = None, err: str | None = None) -> str:
    now = utcnow()
    rows = []
    for it in items:
        claim = f"claimed by {_e(it.claimed_by)}" if it.state == "claimed" else ""
        rows.append(
            f'<tr data-item="{it.id}"><td>{it.id}</td><td>{_e(it.agent)}</td>'
            f'<td>{"".join(f"<span class=tag>{_e(r)}</span>" for r in it.reasons or [])}</td>'
            f'<td>{_e(it.answered_by)}</td><td>{_e(it.state)} {claim}</td><td>{age_text(it.created_at, now)}</td>'
            f'<td><form class="inline" method="post" action="{base}/review/{it.id}/claim">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}"><button type="submit" id="review-{it.id}">Review'
            f'</button></form></td></tr>')
    table = ('<table id="queue"><thead><tr><th>#</th><th>Agent</th><th>Why</th><th>Answered by</th><th>State</th>'
             '<th>Waiting</th><th></th></tr></thead><tbody>' + "".join(rows) + '</tbody></table>') if rows \
        else '<p id="empty">Nothing waits for review.</p>'
    form = (f'<form method="get" action="{base}/" id="filters">Agent <select name="agent">'
            f'{_options(["", *agents], filters.get("agent", ""))}</select> Reason <select name="reason">'
            f'{_options(["", *REASONS], filters.get("reason", ""))}</select> Age <select name="age">'
            f'{_options(list(AGES), filters.get("age", ""), _AGE_LABELS)}</select> '
            f'<button type="submit">Filter</button></form>')
    body = f'<h1>Review queue</h1>{_messages(ok, err)}{form}<p>{len(items)} item(s) pending or claimed</p>{table}'
    return _page("Queue", body, base=base, reviewer=reviewer, csrf=csrf, nonce=nonce)


def _json(value: Any) -> str:
    return _e(json.dumps(value, indent=2, ensure_ascii=False))


def item_page(item: Item, *, base: str, reviewer: str, csrf: str, nonce: str, err: str | None = None,
              draft: str | None = None, schema: dict | None = None) -> str:
    decided = item.state in ("approved", "corrected", "rejected")
    mine = item.state == "claimed" and item.claimed_by == reviewer
    status = (f"{item.state} by {item.decided_by}" if decided else
              f"claimed by {item.claimed_by} until {item.claim_expires_at:%H:%M:%S} UTC" if item.state == "claimed"
              else "pending")
    hidden = f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
    actions = ""
    if not decided:
        editor = draft if draft is not None else json.dumps(item.output, indent=2, ensure_ascii=False)
        actions = (
            f'<h2>Decide</h2><form class="inline" method="post" action="{base}/review/{item.id}/decide">{hidden}'
            f'<input type="hidden" name="action" value="approve"><button type="submit" id="approve">Approve answer'
            f'</button></form> <form class="inline" method="post" action="{base}/review/{item.id}/decide">{hidden}'
            f'<input type="hidden" name="action" value="reject"><input name="note" placeholder="why (optional)" '
            f'id="reject-note"> <button type="submit" id="reject">Reject</button></form>'
            + (f' <form class="inline" method="post" action="{base}/review/{item.id}/release">{hidden}'
               f'<button type="submit" id="release">Release claim</button></form>' if mine else "")
            + f'<h3>Correct</h3><p>Edit the answer as the {_e(item.agent)} contract wants it; it is checked before '
            f'it is saved. <span id="json-status"></span></p><form method="post" id="correct-form" '
            f'action="{base}/review/{item.id}/decide">{hidden}<input type="hidden" name="action" value="correct">'
            f'<textarea name="correction" id="correction" spellcheck="false">{_e(editor)}</textarea><p>'
            f'<button type="button" id="format">Format</button> <button type="submit" id="correct">Save correction'
            f'</button></p></form>'
            + (f'<details><summary>Contract (JSON schema)</summary><pre>{_json(schema)}</pre></details>' if schema else ""))
    audit = "".join(f'<tr><td>{e.at:%Y-%m-%d %H:%M:%S}</td><td>{_e(e.actor)}</td><td>{_e(e.action)}</td>'
                    f'<td><code>{_e(json.dumps(e.detail, ensure_ascii=False))}</code></td></tr>'
                    for e in item.audit)
    correction = f'<h3>Correction</h3><pre id="correction-saved">{_json(item.correction)}</pre>' \
        if item.correction is not None else ""
    body = (f'<h1>Item {item.id}: {_e(item.agent)}</h1>{_messages(None, err)}'
            f'<p><span id="state">{_e(status)}</span> &middot; queued {age_text(item.created_at)} ago because '
            f'{"".join(f"<span class=tag>{_e(r)}</span>" for r in item.reasons or [])} &middot; answered by '
            f'<code>{_e(item.answered_by)}</code> ({_e(item.step)})</p>'
            f'<div class="cols"><section><h2>Input</h2><pre id="input">{_json(item.input)}</pre></section>'
            f'<section><h2>Answer</h2><pre id="answer">{_json(item.output)}</pre>{correction}</section></div>'
            f'{actions}<h2>Audit</h2><table id="audit"><tbody>{audit}</tbody></table>'
            f'<p><a href="{base}/">Back to the queue</a></p>')
    return _page(f"Item {item.id}", body, base=base, reviewer=reviewer, csrf=csrf, nonce=nonce, script=not decided)
