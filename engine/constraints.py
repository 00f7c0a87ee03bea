"""JSON-schema constrained decoding with xgrammar: one compiled grammar per schema, one matcher per row.

Schemas compile to compact JSON (``any_whitespace=False``, separators ``,`` and ``:``): a model cannot
pad the output with whitespace until it runs out of tokens, and the text parses with ``json.loads`` as is.

xgrammar 0.2.9's token mask can also leave out a token its own ``accept_token`` accepts (seen on the
tiny tokenizer: the key token ``conclusion`` after ``}],"`` in the reasoning agent's schema), after which
greedy decoding spells the key in pieces and derails. So before masking, each constrained row's favourite
token is checked with ``accept_token`` and ``rollback``; when the grammar accepts it, it stays allowed. The
grammar's own verdict decides, so nothing outside the schema is ever let through.

Tokens holding a raw control character (bytes 0x00-0x1f) are also banned in constrained rows: xgrammar
0.2.9 lets length-limited strings (``maxLength``) contain them, which ``json.loads`` rejects, and compact
JSON never needs one outside a string (inside, the escapes ``\n``, ``\u0013`` ... remain allowed).

Compiling is the one step whose cost a caller controls (a deeply nested schema took 32 s), so it runs on a
small pool of its own with a timeout (:class:`GrammarCache`), before the request joins a batch: the decode
loop only ever sees compiled grammars, and no request waits for another's compile.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch
import xgrammar as xgr

from .errors import GrammarCompileBusy, GrammarCompileTimeout, InvalidSchema

__all__ = ["GrammarCache", "GrammarJob", "RowConstraint", "BatchMasker"]


class GrammarJob:
    """One schema's compile, shared by every request that asks for it while it runs.

    Attributes:
        key: the schema's compact JSON text (the cache key).
        future: resolves to the ``xgr.CompiledGrammar``, or raises InvalidSchema / GrammarCompileTimeout.
        started_at: ``time.monotonic()`` when a worker began compiling; None while queued (or cached).
    """

    def __init__(self, key: str):
        self.key = key
        self.future: Future = Future()
        self.started_at: float | None = None
        self.waiters = 0  # callers waiting for it; when the last leaves before it starts, it is dropped


class GrammarCache:
    """Compiles JSON schemas for one tokenizer on a bounded worker pool and keeps the last ``capacity`` of them.

    Compiles run in ``workers`` threads of their own, never in the decode loop: a caller :meth:`submit` queues a
    schema (concurrent requests for one schema share one compile) and waits for the job with
    :meth:`wait` or :meth:`wait_left`. A compile that runs longer than ``timeout_s`` is refused, and so is
    every later request for the same schema, without compiling it again.

    Args:
        tokenizer: the Hugging Face tokenizer of the base.
        vocab_size: rows of the model's output embedding (may exceed ``len(tokenizer)`` for padded vocabularies).
        capacity: compiled grammars kept (least recently used dropped first).
        workers: compile threads.
        max_pending: distinct schemas compiling or queued at once; more raise GrammarCompileBusy.
        timeout_s: longest one compile may take.
        nice: niceness added to each compile thread (xgrammar's own threads, started from it, inherit it).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, capacity: int = 64, *, workers: int = 2,
                 max_pending: int = 16, timeout_s: float = 10.0, nice: int = 0):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # Our own LRU keyed by the schema's JSON is the one cache; xgrammar's would hold every schema forever.
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=False, max_threads=2)
        self._capacity = capacity
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._pending: dict[str, GrammarJob] = {}
        self._refused: OrderedDict[str, float] = OrderedDict()  # key -> seconds its compile ran
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grammar-compile",
                                            initializer=_lower_priority, initargs=(nice,))
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.vocab_size = vocab_size
        self.compiles = 0
        self.refusals = 0
        stops = set(info.stop_token_ids)
        self.banned_ids = torch.tensor(
            [i for i, raw in enumerate(info.decoded_vocab) if i not in stops and any(b < 0x20 for b in raw)],
            dtype=torch.long,
        )

    @staticmethod
    def key_of(schema: dict[str, Any]) -> str:
        """The cache key of ``schema``: its compact JSON, key order kept (xgrammar emits properties in it).

        Raises:
            InvalidSchema: the schema is not JSON-serialisable.
        """
        try:
            return json.dumps(schema, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidSchema(f"json_schema is not serialisable as JSON: {exc}") from exc

    @property
    def pending(self) -> int:
        """Schemas compiling or queued to compile."""
        with self._lock:
            return len(self._pending)

    def submit(self, schema: dict[str, Any]) -> GrammarJob:
        """Start compiling ``schema`` unless it is cached or already compiling; never blocks on a compile.

        Raises:
            InvalidSchema: not serialisable.
            GrammarCompileTimeout: this schema's compile ran past the timeout before.
            GrammarCompileBusy: ``max_pending`` other schemas are compiling or queued.
        """
        key = self.key_of(schema)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                job = GrammarJob(key)
                job.future.set_result(self._cache[key])
                return job
            if key in self._refused:
                self.refusals += 1
                raise GrammarCompileTimeout(
                    f"json_schema {_shown(key)} is refused: its grammar compile took {self._refused[key]:.1f}s, "
                    f"more than grammar_compile_timeout_s ({self.timeout_s:g}s); simplify the schema"
                )
            job = self._pending.get(key)
            if job is not None:
                job.waiters += 1
                return job
            if len(self._pending) >= self.max_pending:
                raise GrammarCompileBusy(
                    f"{len(self._pending)} schemas are compiling or queued, max_pending_grammar_compiles is "
                    f"{self.max_pending}; retry shortly"
                )
            job = GrammarJob(key)
            job.waiters = 1
            try:
                self._executor.submit(self._work, job)
            except RuntimeError as exc:  # shut down (the replica is stopping)
                raise GrammarCompileBusy(f"the grammar compile pool is closed: {exc}") from None
            self._pending[key] = job
        return job

    def wait_left(self, job: GrammarJob, since: float) -> float:
        """Seconds a caller that began waiting at ``since`` may still wait for ``job`` (> 0).

        The timeout counts twice, separately: waiting for a free worker (the pool is busy: 503, retry) and
        the compile itself (the schema is too complex: 400).

        Raises:
            GrammarCompileBusy: still queued ``timeout_s`` after ``since``.
            GrammarCompileTimeout: compiling for ``timeout_s`` already.
        """
        now = time.monotonic()
        started = job.started_at
        if started is None:
            left = since + self.timeout_s - now
            if left <= 0 and not job.future.done():
                raise GrammarCompileBusy(
                    f"json_schema waited {now - since:.1f}s for a grammar compile worker, more than "
                    f"grammar_compile_timeout_s ({self.timeout_s:g}s); {self.pending} compiles pending; retry shortly"
                )
        else:
            left = started + self.timeout_s - now
            if left <= 0 and not job.future.done():
                raise GrammarCompileTimeout(
                    f"json_schema {_shown(job.key)}: its grammar compile ran past grammar_compile_timeout_s "
                    f"({self.timeout_s:g}s); simplify the schema"
                )
        return max(left, 0.001)

    def leave(self, job: GrammarJob) -> None:
        """A caller stops waiting for ``job`` (answered or gave up). A job nobody waits for any more is dropped
        while still queued, so abandoned compiles never pile up in front of new ones; a running one finishes."""
        with self._lock:
            job.waiters -= 1
            if job.waiters <= 0 and job.future.cancel():  # False once running or done
                self._forget(job)

    def wait(self, job: GrammarJob) -> xgr.CompiledGrammar:
        """Block until ``job`` is compiled (for callers outside an event loop), within the timeouts."""
        since = time.monotonic()
        try:
            while True:
                try:
                    return job.future.result(timeout=self.wait_left(job, since))
                except FutureTimeout:
                    continue
        finally:
            self.leave(job)

    def _forget(self, job: GrammarJob) -> None:
        # Under the lock. Only this job: a newer one for the same schema may have been submitted since.
        if self._pending.get(job.key) is job:
            del self._pending[job.key]

    def get(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        """Return the compiled grammar of ``schema``, compiling it on the pool on first use (blocking).

        Raises:
            InvalidSchema, GrammarCompileTimeout, GrammarCompileBusy: see :meth:`submit` and :meth:`wait_left`.
        """
        return self.wait(self.submit(schema))

    def _work(self, job: GrammarJob) -> None:
        if not job.future.set_running_or_notify_cancel():  # every waiter left while it was queued
            with self._lock:
                self._forget(job)
            return
        try:
            job.future.set_result(self._run(job))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the job
            job.future.set_exception(exc)

    def _run(self, job: GrammarJob) -> xgr.CompiledGrammar:
        job.started_at = time.monotonic()
        try:
            compiled = self._compile(job.key)
        finally:
            seconds = time.monotonic() - job.started_at
            with self._lock:
                self._forget(job)
        with self._lock:
            if seconds > self.timeout_s:
                # Refused even though it finished: whether a schema is served must not depend on who waited.
                self._refused[job.key] = seconds
                while len(self._refused) > 4 * self._capacity:
                    self._refused.popitem(last=False)
                raise GrammarCompileTimeout(
                    f"json_schema {_shown(job.key)}: its grammar compile took {seconds:.1f}s, more than "
                    f"grammar_compile_timeout_s ({self.timeout_s:g}s); simplify the schema"
                )
            self.compiles += 1
            self._cache[job.key] = compiled
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, key: str) -> xgr.CompiledGrammar:
        """The xgrammar call itself, in a worker thread (tests wrap it to hold a compile)."""
        try:
            return self._compiler.compile_json_schema(key, any_whitespace=False, separators=(",", ":"),
                                                      strict_mode=True)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses from C++.
            raise InvalidSchema(f"json_schema {_shown(key)} cannot be compiled: {exc}") from exc

    def close(self) -> None:
        """Stop the compile threads once their current compiles end; queued compiles are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread and inherited by threads it starts)."""
    if nice and hasattr(os, "setpriority"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError:  # not permitted here: compile at normal priority
            pass


def _shown(key: str) -> str:
    return key if len(key) <= 200 else key[:200] + "..."


class RowConstraint:
    """The grammar state of one constrained row."""

    def __init__(self, compiled: xgr.CompiledGrammar):
        self.matcher = xgr.GrammarMatcher(compiled, max_rollback_tokens=1)
        self.rescued = 0  # tokens the mask left out but the grammar accepts (see the module docstring)

    def allows(self, token_id: int) -> bool:
        """Ask the grammar itself whether ``token_id`` may come next (leaves the state unchanged)."""
        if self.matcher.is_terminated() or not self.matcher.accept_token(token_id):
            return False
        self.matcher.rollback(1)
        return True

    def accept(self, token_id: int) -> None:
        """Advance the grammar by the chosen token (chosen under the mask, so it always fits)."""
        if not self.matcher.accept_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id} that its own mask allowed")

    @property
    def done(self) -> bool:
        """True once the grammar has accepted its stop token: the JSON value is complete."""
        return self.matcher.is_terminated()


def _bit(position: int) -> int:
    """``1 << position`` as the signed 32-bit value xgrammar's int32 bitmask holds."""
    value = 1 << position
    return value - (1 << 32) if value >= 1 << 31 else value


class BatchMasker:
    """Applies every constrained row's token mask to a ``[batch, vocab]`` logits tensor in one call."""

    def __init__(self, batch_size: int, vocab_size: int, banned_ids: torch.Tensor | None = None):
        self.bitmask = xgr.allocate_token_bitmask(batch_size, vocab_size)
        self.vocab_size = vocab_size
        self.banned_ids = banned_ids if banned_ids is not None and len(banned_ids) else None

    def apply(self, logits: torch.Tensor, rows: dict[int, RowConstraint]) -> None:
        """Mask ``logits`` in place for the given ``{batch index: constraint}`` rows."""
        if not rows:
            return
        favourites = logits[list(rows)].argmax(dim=-1).tolist()
        for (index, constraint), token in zip(rows.items(), favourites):
            constraint.matcher.fill_next_token_bitmask(self.bitmask, index)
            word, bit = divmod(token, 32)
            if token < self.vocab_size and not (int(self.bitmask[index, word]) >> bit) & 1 and constraint.allows(token):
                self.bitmask[index, word] |= _bit(bit)
                constraint.rescued += 1
        xgr.apply_token_bitmask_inplace(
            logits, self.bitmask.to(logits.device), vocab_size=self.vocab_size, indices=list(rows)
        )
        if self.banned_ids is not None:
            index = torch.tensor(list(rows), device=logits.device)
            logits[index.unsqueeze(1), self.banned_ids.to(logits.device).unsqueeze(0)] = float("-inf")
