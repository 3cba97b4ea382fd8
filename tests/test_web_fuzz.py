"""The review page fuzzed: every route of the app, GET and POST, with valid and hostile tokens, CSRF values,
cookies, Host and Origin headers, path, query and form values, generated with Hypothesis and sent through
Starlette's TestClient to the real app on a real store. No answer is a 500, and every answer is kept out of caches.

REFINERY_FUZZ_EXAMPLES sets the cases in all (default 400, as in test_fuzz.py, split over the ten routes);
REFINERY_FUZZ_RANDOM=1 draws new cases instead of the same derandomized ones each run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_web import TOKEN, built  # noqa: F401 (built: the fixture, a finished round written with SQL)

from refinery.project import load_project
from refinery.report.web import make_app

EXAMPLES = int(os.environ.get("REFINERY_FUZZ_EXAMPLES", "400"))
ROUTES = [("GET", "/"), ("GET", "/round/{n}"), ("GET", "/pattern/{id}"), ("GET", "/examples"), ("GET", "/{id}"),
          ("POST", "/pattern/{id}/decide"), ("POST", "/pattern/{id}/rename"), ("POST", "/pattern/{id}/merge"),
          ("POST", "/example/{id}/relabel"), ("POST", "/examples/decide"), ("GET", "/judge"),
          ("POST", "/judge/label")]
FUZZ = settings(max_examples=max(1, EXAMPLES // len(ROUTES)), deadline=None, database=None,
                derandomize=not os.environ.get("REFINERY_FUZZ_RANDOM"), suppress_health_check=list(HealthCheck))
SESSION = "fuzz-session"
ODD = ["", "--1", "²", "٣", "-1", "0", "1", "99999999999999999999", "1e3", " 1", "\u202e", "\u200b", "\x00", "%",
       "%zz", "'; DROP TABLE examples; --", "../../etc/passwd", "//evil.example", "/\\evil.example", "<script>",
       "null", "{}", "[" * 200, "é" * 50]
PARAMETERS = ("split", "source", "status", "check", "pattern", "text", "id", "round", "token", "next", "show")
HOSTILE = st.one_of(st.sampled_from(ODD), st.text(max_size=30))
HEADER = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=30)
TALLY: dict[str, int] = {}  # answers by route and status, printed at the end: the cases reach past the guard


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    print(f"\nweb fuzz answers by route and status: {dict(sorted(TALLY.items()))}")


@pytest.fixture(scope="module")
def app(built, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """The app on a copy of the built project; the ids a case can name, real ones among them."""
    root = tmp_path_factory.mktemp("web-fuzz") / "demo"
    shutil.copytree(built["project"].root, root)
    with TestClient(make_app(load_project(root, environ={}), token=TOKEN), follow_redirects=False) as client:
        page = client.get("/round/1", headers={"cookie": f"refinery-token-80={TOKEN}; refinery-session-80={SESSION}"})
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        yield {"client": client, "csrf": csrf,
               "ids": ["r001-c01", "r001-c02", built["relabel"], built["pending"], built["active"]]}


@st.composite
def cookies(draw, hostile: bool) -> str:
    """The token and session cookies (valid, or when `hostile` each valid, missing or hostile) and a flash."""
    jar = {}
    for name, valid in (("refinery-token-80", TOKEN), ("refinery-session-80", SESSION),
                        ("refinery-flash", quote(json.dumps({"ok": False, "text": "a message"})))):
        kind = draw(st.sampled_from(["valid", "none", "hostile"])) if hostile or "flash" in name else "valid"
        if kind != "none":
            jar[name] = valid if kind == "valid" else draw(HOSTILE | HEADER)
    return "; ".join(f"{k}={v}" for k, v in jar.items())


@st.composite
def requests(draw, method: str, path: str, ids: list[str], csrf: str) -> dict:
    """One request to a route (now and then with the other method): its path, query, form, cookies and headers."""
    if draw(st.integers(0, 9)) == 0:
        method = "GET" if method == "POST" else "POST"
    value = st.sampled_from(ids) | HOSTILE
    path = path.format(id=quote(draw(value), safe=""),
                       n=quote(draw(st.sampled_from(["0", "1", "2"]) | st.integers(-5, 10**30).map(str) | HOSTILE),
                               safe=""))
    known = st.sampled_from(["analysis", "generated", "pending", "display_weather_present", TOKEN, "1"])
    query = {name: draw(known | value) for name in PARAMETERS if draw(st.integers(0, 2)) == 0}
    hostile = draw(st.integers(0, 3)) == 0  # else the token, session and origin are this site's own
    headers = {"cookie": draw(cookies(hostile)).encode()}
    origin = draw(st.sampled_from(["https://testserver", "null", None, "http://testserver:81", "http://evil.example"])
                  | HEADER) if hostile else "http://testserver"
    if origin is not None:
        headers["origin"] = origin.encode()
    if hostile and draw(st.booleans()):
        headers["host"] = draw(st.sampled_from(["testserver:abc", "[::1", "", "testserver:99999", "a b"]) |
                               HEADER).encode()
    request = {"method": method, "url": path, "params": query, "headers": headers}
    if method == "POST":
        request.update(draw(bodies(value, csrf)))
    return request


@st.composite
def bodies(draw, value, csrf: str) -> dict:
    """A form as a browser posts it (its fields valid or hostile), or a body that is no such form."""
    kind = draw(st.sampled_from(["form", "form", "form", "raw", "multipart"]))
    if kind == "raw":
        content_type = draw(st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                             "multipart/form-data; boundary=x", "text/plain"]))
        return {"content": draw(st.binary(max_size=60)), "content_type": content_type}
    form = {"csrf": csrf if draw(st.integers(0, 3)) else draw(st.sampled_from(["", csrf.upper()]) | HOSTILE),
            "next": draw(st.sampled_from(["/round/1", "/examples", "/pattern/r001-c01"]) | HOSTILE)}
    for field, choices in (("decision", ["accept", "reject"]), ("label", ["a label"]), ("other", []),
                           ("output", ["Answer: 5", "Answer: 2<display_weather>☀️</display_weather>"]),
                           ("anyway", ["1"]), ("all", ["1"]), ("round", ["1", "0"]), ("example", []),
                           ("check", ["display_weather_present"]), ("verdict", ["pass", "fail"])):
        if draw(st.booleans()):
            form[field] = draw(st.sampled_from(choices) | value if choices else value)
    form["id"] = draw(st.lists(value, max_size=3))
    if kind == "multipart":
        return {"data": {k: v for k, v in form.items() if isinstance(v, str)},
                "files": {"upload": ("x.txt", draw(st.binary(max_size=20)))}}
    return {"data": form}


@pytest.mark.parametrize(("method", "route"), ROUTES)
@given(data=st.data())
@FUZZ
def test_no_request_gets_a_500(app, method: str, route: str, data) -> None:
    request = data.draw(requests(method, route, app["ids"], app["csrf"]))
    route = f"{request['method']} {route}"
    client = app["client"]
    client.cookies.clear()  # each case sends the cookies it drew, no more
    content_type = request.pop("content_type", None)
    if content_type:
        request["headers"]["content-type"] = content_type.encode()
    response = client.request(**request)
    assert response.status_code < 500, (request, response.text[-2000:])
    TALLY[f"{route} {response.status_code}"] = TALLY.get(f"{route} {response.status_code}", 0) + 1
    assert response.headers["cache-control"] == "no-store"
    assert "content-security-policy" in response.headers
    location = response.headers.get("location")
    if response.status_code == 303 and location and location.startswith("/"):
        _follow(client, location, response)


def _follow(client: TestClient, location: str, response) -> None:
    """The page a redirect leads to, with the flash it set: the message an action left must show, not break it."""
    flash = re.search(r"refinery-flash=([^;]*)", ", ".join(response.headers.get_list("set-cookie")))
    cookie = f"refinery-token-80={TOKEN}; refinery-session-80={SESSION}"
    client.cookies.clear()
    page = client.get(location, headers={"cookie": cookie + (f"; refinery-flash={flash.group(1)}" if flash else "")})
    assert page.status_code < 500, (location, page.text[-2000:])
