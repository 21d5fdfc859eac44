"""The HTTP side, against the real Daphne processes, through PgBouncer."""

import http.client
import json
import time
import uuid

import pytest

from probes.chat import ChatHttp


@pytest.fixture
def api(stack):
    return ChatHttp(stack.app_url)


def test_healthz_proves_a_round_trip_through_pgbouncer(api, pgbouncer_console):
    from pooled_postgres.observe import pgbouncer_show

    def app_queries():
        stats = {row["database"]: row for row in pgbouncer_show(pgbouncer_console, "STATS")}
        return stats["chat"]["total_query_count"]

    before = app_queries()
    result = api.request("GET", "/healthz")
    assert result.status == 200
    assert result.body == {"status": "ok", "database": "ok"}
    assert app_queries() > before  # the SELECT 1 went through PgBouncer


def test_index_page_sets_the_csrf_cookie(api):
    result = api.request("GET", "/")
    assert result.status == 200
    assert "<title>Chat rooms" in result.body
    assert api.csrf_token()


def test_create_list_and_read_a_room(api, owner_db):
    slug = f"r-{uuid.uuid4().hex[:10]}"
    created = api.request("POST", "/api/rooms", {"slug": slug, "title": "A room"})
    assert created.status == 201
    assert created.body["slug"] == slug
    assert owner_db.execute("SELECT title FROM chat_room WHERE slug = %s", [slug]).fetchone() == ("A room",)

    rooms = api.request("GET", "/api/rooms")
    assert slug in {room["slug"] for room in rooms.body["rooms"]}

    history = api.request("GET", f"/api/rooms/{slug}/messages?limit=5")
    assert history.status == 200
    assert history.body == {"room": slug, "messages": []}


def test_duplicate_room_is_409(api, room):
    result = api.request("POST", "/api/rooms", {"slug": room, "title": "again"})
    assert result.status == 409
    assert result.body["code"] == "room_exists"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"slug": "has space", "title": "x"}, "invalid_room"),
        ({"slug": "ok-slug"}, "invalid_room"),
        (["not", "an", "object"], "invalid_body"),
    ],
)
def test_invalid_room_is_400_and_stores_nothing(api, owner_db, body, code):
    result = api.request("POST", "/api/rooms", body)
    assert result.status == 400
    assert result.body["code"] == code
    assert owner_db.execute("SELECT count(*) FROM chat_room WHERE slug = 'ok-slug'").fetchone() == (0,)


def test_post_without_csrf_token_is_refused_with_json(stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack.config.app_port, timeout=10)
    connection.request("POST", "/api/rooms", body=b'{"slug": "x", "title": "x"}')
    response = connection.getresponse()
    assert response.status == 403
    assert b'"csrf_failed"' in response.read()


def test_history_of_unknown_room_is_404(api):
    result = api.request("GET", "/api/rooms/no-such-room/messages")
    assert result.status == 404
    assert result.body["code"] == "room_not_found"


@pytest.mark.parametrize("limit", ["0", "101", "many"])
def test_history_limit_out_of_range_is_400(api, room, limit):
    result = api.request("GET", f"/api/rooms/{room}/messages?limit={limit}")
    assert result.status == 400
    assert result.body["code"] == "invalid_limit"


def test_unknown_host_header_is_400(stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack.config.app_port, timeout=10)
    connection.request("GET", "/healthz", headers={"Host": "evil.example"})
    assert connection.getresponse().status == 400


def get(stack, path: str) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.config.app_port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    return response, response.read()


def test_pool_status_is_not_served_as_shipped(stack):
    response, _ = get(stack, "/pool-status")
    assert response.status == 404
    _, page = get(stack, "/")
    assert b'id="pool"' not in page


def test_pool_status_counts_the_app_roles_server_connections_against_the_bound(
    app_showing_pool, pgbouncer_console
):
    from pooled_postgres.observe import bound_from_console

    response, body = get(app_showing_pool, "/pool-status")
    assert response.status == 200, body
    assert response.headers["Content-Type"] == "application/json"
    assert "no-store" in response.headers["Cache-Control"]
    status = json.loads(body)
    assert status["connections"] >= 1  # the server connection that answered the count is one
    assert status["bound"] == 12 == bound_from_console(pgbouncer_console)  # what PgBouncer runs with


def test_pool_status_follows_the_server_connections_held(app_showing_pool, open_transactions):
    """Three transactions held open hold three server connections; the count, taken on a
    fourth, sees at least those four once the cached count has expired."""
    with open_transactions(3):
        time.sleep(1.1)  # past the app's 1 s cache, in both processes
        _, body = get(app_showing_pool, "/pool-status")
    assert json.loads(body)["connections"] >= 4


def test_pool_status_asks_postgresql_at_most_once_a_second_per_process(app_showing_pool, pgbouncer_console):
    from pooled_postgres.observe import pgbouncer_show

    def app_queries():
        return {row["database"]: row for row in pgbouncer_show(pgbouncer_console, "STATS")}["chat"][
            "total_query_count"
        ]

    polls = 40
    before, started = app_queries(), time.monotonic()
    for _ in range(polls):
        assert get(app_showing_pool, "/pool-status")[0].status == 200
    elapsed = time.monotonic() - started
    queries = app_queries() - before
    processes = app_showing_pool.config.app_workers
    assert queries <= processes * (int(elapsed) + 1) < polls, (queries, elapsed)
