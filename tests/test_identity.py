"""The user cookie and the same-site check (apis/identity.py), on a tiny app: no server process needed."""

import multiprocessing
import os
import stat

import pytest
from fastapi import Depends, FastAPI
from starlette.testclient import TestClient

from apis.identity import COOKIE, KEY_FILE, UserCookieMiddleware, current_user, load_key, same_site_only


def make_app(data_dir=None, secret_key=None) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    def me(user: str = Depends(current_user)):
        return {"user": user}

    @app.post("/records", dependencies=[Depends(same_site_only)])
    def create(user: str = Depends(current_user)):
        return {"user": user, "created": True}

    @app.delete("/records/1", dependencies=[Depends(same_site_only)])
    def delete(user: str = Depends(current_user)):
        return {"user": user, "deleted": True}

    app.add_middleware(UserCookieMiddleware, secret_key=secret_key, data_dir=data_dir)
    return app


@pytest.fixture
def app(tmp_path):
    return make_app(data_dir=tmp_path)


def test_first_visit_sets_an_httponly_samesite_cookie(app):
    with TestClient(app) as client:
        answer = client.get("/me")
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert any(a.startswith("max-age=") and int(a.split("=")[1]) >= 30 * 24 * 3600 for a in attributes)
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert answer.json()["user"] in cookie


def test_https_request_gets_a_secure_cookie(app):
    with TestClient(app, base_url="https://testserver") as client:
        cookie = client.get("/me").headers["set-cookie"]
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_same_cookie_keeps_the_same_id(app):
    with TestClient(app) as client:
        first = client.get("/me")
        second = client.get("/me")
        third = client.post("/records")
    assert first.json()["user"] == second.json()["user"] == third.json()["user"]
    assert "set-cookie" not in second.headers  # a valid cookie is not set again


def test_two_clients_get_different_ids(app):
    with TestClient(app) as one, TestClient(app) as two:
        assert one.get("/me").json()["user"] != two.get("/me").json()["user"]


def test_tampered_cookie_is_replaced(app):
    with TestClient(app) as client:
        user = client.get("/me").json()["user"]
        value = client.cookies[COOKIE]
        other = "A" * 24
        forged = [
            other + value[len(user):],  # another id under this id's signature
            value[:-2] + ("AA" if not value.endswith("AA") else "BB"),  # a changed signature
            user,  # no signature
            "garbage",
        ]
        for bad in forged:
            client.cookies.clear()
            answer = client.get("/me", headers={"Cookie": f"{COOKIE}={bad}"})
            assert answer.json()["user"] not in (user, other)
            assert answer.headers["set-cookie"].startswith(f"{COOKIE}=")


def test_cookie_signed_with_another_key_is_replaced(tmp_path):
    with TestClient(make_app(data_dir=tmp_path / "a")) as one:
        user = one.get("/me").json()["user"]
        value = one.cookies[COOKIE]
    with TestClient(make_app(data_dir=tmp_path / "b")) as two:
        answer = two.get("/me", headers={"Cookie": f"{COOKIE}={value}"})
    assert answer.json()["user"] != user
    assert "set-cookie" in answer.headers


def test_key_persists_across_instances_reading_the_same_data_dir(tmp_path):
    with TestClient(make_app(data_dir=tmp_path)) as first:
        user = first.get("/me").json()["user"]
        value = first.cookies[COOKIE]
    key_file = tmp_path / KEY_FILE
    assert key_file.exists()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    with TestClient(make_app(data_dir=tmp_path)) as restarted:  # a new process reading the same DATA_DIR
        answer = restarted.get("/me", headers={"Cookie": f"{COOKIE}={value}"})
    assert answer.json()["user"] == user
    assert "set-cookie" not in answer.headers


def _load(data_dir, queue):
    queue.put(load_key(None, data_dir))


def test_processes_starting_together_agree_on_one_key(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_load, args=(tmp_path, queue)) for _ in range(6)]
    for process in processes:
        process.start()
    keys = {queue.get(timeout=60) for _ in processes}
    for process in processes:
        process.join(timeout=60)
    assert len(keys) == 1
    assert keys == {load_key(None, tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left behind


def test_secret_key_wins_over_the_kept_key(tmp_path):
    secret = "a-secret-of-sufficient-length"
    with TestClient(make_app(data_dir=tmp_path)) as kept:
        kept_value = kept.get("/me") and kept.cookies[COOKIE]
    with TestClient(make_app(data_dir=tmp_path, secret_key=secret)) as first:
        user = first.get("/me").json()["user"]
        value = first.cookies[COOKIE]
        first.cookies.clear()
        assert first.get("/me", headers={"Cookie": f"{COOKIE}={kept_value}"}).headers.get("set-cookie")
    # another server with the same SECRET_KEY and a different DATA_DIR recognises the cookie
    with TestClient(make_app(data_dir=tmp_path / "elsewhere", secret_key=secret)) as other:
        answer = other.get("/me", headers={"Cookie": f"{COOKIE}={value}"})
    assert answer.json()["user"] == user
    assert not (tmp_path / "elsewhere" / KEY_FILE).exists()  # nothing generated while SECRET_KEY is set


def test_cross_site_post_refused(app):
    with TestClient(app) as client:
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "https://evil.example"},
            {"Origin": "http://testserver.evil.example"},
            {"Origin": "http://testserver:8080"},  # another port is another origin
            {"Origin": "null"},  # a sandboxed frame or a data: page
            {"Origin": "https://testserver"},  # another scheme
        ):
            answer = client.post("/records", headers=headers)
            assert answer.status_code == 403, headers
            assert "detail" in answer.json()
        assert client.delete("/records/1", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403


def test_same_origin_post_accepted(app):
    with TestClient(app) as client:
        for headers in (
            {},  # not a browser (curl, client.py): no Origin, no Sec-Fetch-Site
            {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "http://TestServer:80"},  # the default port written out, any case
            {"Sec-Fetch-Site": "none"},  # typed by the user
        ):
            answer = client.post("/records", headers=headers)
            assert answer.status_code == 200, (headers, answer.text)
            assert answer.json()["created"] is True
    with TestClient(app, base_url="http://127.0.0.1:8010") as client:
        assert client.post("/records", headers={"Origin": "http://127.0.0.1:8010"}).status_code == 200
        assert client.post("/records", headers={"Origin": "http://localhost:8010"}).status_code == 403


def test_cross_site_get_is_not_refused(app):
    """A read from a link on another site is fine: the check is for requests that change something."""
    with TestClient(app) as client:
        assert client.get("/me", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_page_load_refreshes_the_cookie(app):
    with TestClient(app) as client:
        user = client.get("/me").json()["user"]
        answer = client.get("/me", headers={"Sec-Fetch-Mode": "navigate"})
    assert answer.json()["user"] == user
    assert answer.headers["set-cookie"].startswith(f"{COOKIE}=")
