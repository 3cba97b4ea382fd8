"""Review in the browser: a local web app on a project's store (rounds, patterns, members, examples) whose actions
call the same functions as the review commands. `refinery review` serves it; `make_app` builds it for tests."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from refinery.errors import RefineryError, StoreError
from refinery.report.web_pages import (
    BadRequest,
    decide_examples,
    decide_pattern,
    examples_page,
    judge_page,
    label_judge,
    merge_pattern,
    pattern_page,
    patterns_page,
    relabel_example,
    rename_pattern,
    rounds_page,
    show_plain,
    show_text,
)
from refinery.store import Store

READ_WAIT = 1.0  # seconds a page waits for a writer (an `iterate` in another terminal) before saying it is busy
WRITE_WAIT = 5.0  # an action waits longer: a person has just clicked
Handler = Callable[[Request], Awaitable[Response]]


class StoreBusy(RefineryError):
    """Another process holds the store for writing."""


def make_app(project, *, token: str) -> Starlette:
    """The review app for `project`; every request must carry `token` (in the URL once, then in a cookie)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("refinery.report", "web_templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
    env.filters["sci"] = lambda v: "-" if v is None else f"{v:.1e}"
    env.filters["u"], env.filters["plain"] = show_text, show_plain
    site = _Site(project, token, env)
    routes = [Route("/", site.page(rounds_page)), Route("/round/{number:int}", site.page(patterns_page)),
              Route("/pattern/{id}", site.page(pattern_page)), Route("/examples", site.page(examples_page)),
              Route("/pattern/{id}/decide", site.action(decide_pattern), methods=["POST"]),
              Route("/pattern/{id}/rename", site.action(rename_pattern), methods=["POST"]),
              Route("/pattern/{id}/merge", site.action(merge_pattern), methods=["POST"]),
              Route("/example/{id}/relabel", site.action(relabel_example), methods=["POST"]),
              Route("/examples/decide", site.action(decide_examples), methods=["POST"]),
              Route("/judge", site.page(judge_page)),
              Route("/judge/label", site.action(label_judge), methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.project = project
    app.add_middleware(_Guard, site=site)
    return app


def serve(project, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          token: str | None = None, allow_remote: bool = False, announce: Callable[[str], None] = print,
          warn: Callable[[str], None] = lambda text: print(f"Warning: {text}", file=sys.stderr)) -> None:
    """Serve the review app until Ctrl-C. Port 0 takes a free one; the URL (with its token) is announced and, when
    a browser is there, opened. A host other than loopback is refused unless `allow_remote`, then warned about."""
    import socket

    import uvicorn

    _check_host(host, allow_remote=allow_remote, warn=warn)
    token = token or secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RefineryError(f"cannot listen on {host}:{port}: {exc.strerror}. Pick another --port (or leave it "
                            f"out for a free one).") from None
    sock.listen(64)
    shown = socket.gethostname() if host in WILDCARDS else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/?token={token}"
    announce(f"Reviewing {project.root} at\n  {url}\nCtrl-C stops it.")
    if open_browser and _has_display():
        import webbrowser
        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(make_app(project, token=token), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises the signal it caught
        pass
    finally:
        sock.close()


WILDCARDS = ("", "0.0.0.0", "::")


def _check_host(host: str, *, allow_remote: bool, warn: Callable[[str], None]) -> None:
    """Loopback only, unless asked for: on another address any machine that can reach this one can open the page,
    and the token in its URL travels unencrypted."""
    if _is_loopback(host):
        return
    where = "every network interface" if host in WILDCARDS else f"'{host}', not only this machine's loopback"
    if not allow_remote:
        raise RefineryError(f"--host '{host}' listens on {where}: other machines could reach the review page, and "
                            f"its token travels unencrypted. Leave --host out (127.0.0.1), or pass --allow-remote "
                            f"if other machines should reach it.")
    warn(f"listening on {where} (--allow-remote): anyone on the network who sees the URL can change the store, "
         f"and the URL is sent unencrypted.")


def _is_loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve to any interface
        return False


def _has_display() -> bool:
    """False on a Linux machine without a graphical session: webbrowser would start a text browser in the
    terminal the server is printing to."""
    import os
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Site:
    """What every handler needs: the project, the token, the templates, and how to open the store."""

    def __init__(self, project, token: str, env):
        self.project, self.token, self.env = project, token, env
        # Store work runs in worker threads, off the event loop; DuckDB refuses a read-only connection beside a
        # writable one in the same process, so the threads take the store one at a time.
        self.lock = threading.Lock()

    def csrf(self, session: str) -> str:
        return hmac.new(self.token.encode(), f"csrf:{session}".encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()

    @contextlib.contextmanager
    def store(self, *, write: bool) -> Iterator[Store]:
        """The store, opened for this request only, so that an `iterate` elsewhere waits at most a moment; as long
        for another request of this page to finish with it."""
        wait, start = WRITE_WAIT if write else READ_WAIT, time.monotonic()
        if not self.lock.acquire(timeout=wait):
            raise StoreBusy("another action on this page is still waiting for the store.")
        try:
            with self._open(write=write, wait=max(0.0, wait - (time.monotonic() - start))) as store:
                yield store
        finally:
            self.lock.release()

    def _open(self, *, write: bool, wait: float) -> Store:
        try:
            return Store(self.project.store_path, read_only=not write, wait=wait)
        except StoreError as exc:
            # Store words a lock held by another process this way (refinery/store.py, _connect).
            if "another process" in str(exc):
                raise StoreBusy(str(exc)) from None
            raise

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(12)
        flash = request.cookies.get(FLASH)
        body = self.env.get_template(name).render(
            csrf=self.csrf(request.state.session), nonce=nonce, path=_here(request), project=self.project.root,
            flash=_read_flash(flash), **context)
        response = HTMLResponse(body, status_code=status)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; form-action 'self'; "
            f"frame-ancestors 'none'; base-uri 'none'")
        if flash:
            response.delete_cookie(FLASH, path="/")
        return response

    def page(self, build: Callable[..., tuple[str, dict[str, Any]]]) -> Handler:
        """A GET handler: `build(project, store, request)` reads the store and names a template and its context."""
        def read(request: Request) -> tuple[str, dict[str, Any]]:
            with self.store(write=False) as store:
                return build(self.project, store, request)

        async def handler(request: Request) -> Response:
            try:
                name, context = await run_in_threadpool(read, request)
            except StoreBusy as exc:
                return self.render(request, "busy.html", status=503, detail=str(exc), retry=True)
            except BadRequest as exc:
                return self.render(request, "message.html", status=400, title="Bad request", detail=str(exc))
            except RefineryError as exc:
                return self.render(request, "message.html", status=404, title="Not found", detail=str(exc))
            return self.render(request, name, **context)
        return handler

    def action(self, act: Callable[[Store, Request, Any], str]) -> Handler:
        """A POST handler: the CSRF token checked, then `act(store, request, form)` on a writable store, whose
        message is shown on the page the form came from."""
        def write(request: Request, form) -> str:
            with self.store(write=True) as store:
                return act(store, request, form)

        async def handler(request: Request) -> Response:
            form = await request.form()
            if not _same_secret(str(form.get("csrf", "")), self.csrf(request.state.session)):
                return self.render(request, "message.html", status=403, title="Refused",
                                   detail="The form's CSRF token is missing or stale. Reload the page and try again.")
            back = _safe_next(str(form.get("next", "/")))
            try:
                flash = {"ok": True, "text": await run_in_threadpool(write, request, form)}
            except StoreBusy as exc:
                return self.render(request, "busy.html", status=503, detail=str(exc), retry=False)
            except RefineryError as exc:
                flash = {"ok": False, "text": str(exc)}
            response = RedirectResponse(back, status_code=303)
            response.set_cookie(FLASH, quote(json.dumps(flash)), path="/", httponly=True, samesite="strict")
            return response
        return handler


FLASH = "refinery-flash"


def _read_flash(cookie: str | None) -> dict[str, Any] | None:
    """The message an action left for the next page; a cookie that holds none (edited, cut short) shows nothing,
    and is removed all the same."""
    if not cookie:
        return None
    try:
        flash = json.loads(unquote(cookie))
    except (ValueError, RecursionError):
        return None
    if not isinstance(flash, dict) or not isinstance(flash.get("text"), str):
        return None
    return {"ok": flash.get("ok") is True, "text": flash["text"]}


class _Guard:
    """Every request carries the token (query once, then cookie); every POST comes from this site's own pages;
    every response is kept out of caches and, when it sets none of its own, carries a CSP that allows nothing."""

    def __init__(self, app, site: _Site):
        self.app, self.site = app, site

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request, send = Request(scope, receive), _guarded(send)
        try:
            port = request.url.port or 80
        except ValueError:  # a Host header that is no host[:port]
            return await _refusal(400, "The request's Host header is not a host and port.")(scope, receive, send)
        cookie, session_cookie = f"refinery-token-{port}", f"refinery-session-{port}"
        given = request.query_params.get("token")
        if given is not None and _same_secret(given, self.site.token):
            # First visit: the token moves into a cookie and out of the address bar (and of Referer headers).
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(cookie, self.site.token, path="/", httponly=True, samesite="strict")
            return await response(scope, receive, send)
        if not _same_secret(request.cookies.get(cookie, ""), self.site.token):
            response = _refusal(403, "Open the URL that <code>refinery review</code> printed: it holds the access "
                                     "token.")
            return await response(scope, receive, send)
        if request.method == "POST" and not _same_origin(request):
            return await _refusal(403, "A form posted from another site was refused.")(scope, receive, send)
        session = request.cookies.get(session_cookie)
        scope.setdefault("state", {})["session"] = session or secrets.token_urlsafe(16)

        async def send_with_session(message) -> None:
            if message["type"] == "http.response.start" and not session:
                value = f"{session_cookie}={scope['state']['session']}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", value.encode())]
            await send(message)
        await self.app(scope, receive, send_with_session)


BARE_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def _guarded(send):
    """`send` with the headers every response needs: no caching (pages show the store and set tokens), no MIME
    sniffing, and a CSP for responses that carry none of their own (refusals, Starlette's 404 and 405)."""
    async def send_guarded(message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                headers.append((b"content-security-policy", BARE_CSP))
            message = {**message, "headers": [*headers, (b"cache-control", b"no-store"),
                                              (b"x-content-type-options", b"nosniff")]}
        await send(message)
    return send_guarded


def _refusal(status: int, detail: str) -> HTMLResponse:
    title = "403 Forbidden" if status == 403 else "400 Bad Request"
    return HTMLResponse(f"<!doctype html><title>refinery review</title><h1>{title}</h1><p>{detail}</p>",
                        status_code=status)


def _same_secret(given: str, secret: str) -> bool:
    """Compared as bytes: hmac.compare_digest raises TypeError on a str with a character beyond ASCII."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _same_origin(request: Request) -> bool:
    """The Origin header (or, without one, the Referer) names this site: its scheme, host and port."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    here = _origin(f"{request.url.scheme}://{request.url.netloc}")
    return here is not None and _origin(source) == here


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of `url`, the port filled in when it is the scheme's default; None for no URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or {"http": 80, "https": 443}.get(parts.scheme)


def _safe_next(target: str) -> str:
    """Only a path on this site, never another site's URL."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


# --- showing user text ---------------------------------------------------------------------------------------------
