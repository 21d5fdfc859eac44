"""HTTP pages and JSON API, served through Django's ASGI handler under Daphne."""

import json
import logging
from functools import wraps

from django import forms
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods

from chat import csp, pool_panel, store
from chat.models import Room

logger = logging.getLogger(__name__)


def error(status: int, code: str, message: str, **extra) -> JsonResponse:
    return JsonResponse({"type": "error", "code": code, "message": message, **extra}, status=status)


def database_errors_as_503(view):
    """Answer 503 with a JSON error when PostgreSQL/PgBouncer is unreachable."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except IntegrityError:
            raise
        except DatabaseError as exc:
            logger.warning("database unavailable for %s: %s", request.path, exc)
            return error(503, "unavailable", "the database is unavailable; try again")

    return wrapper


@require_GET
@never_cache  # its nonce is for this response only: no cache may serve it again
@ensure_csrf_cookie  # the page's JavaScript sends the cookie back as X-CSRFToken
def index(request):
    # The page's inline <script>s and <style> run because they carry this nonce;
    # anything injected into the page would not (chat/csp.py).
    nonce = csp.new_nonce()
    response = render(request, "chat/index.html", {"csp_nonce": nonce, "show_pool": settings.CHAT_SHOW_POOL})
    response.headers["Content-Security-Policy"] = csp.page_policy(nonce)
    return response


@require_GET
def healthz(request):
    """200 only when a query makes the round trip through PgBouncer to PostgreSQL."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.warning("healthz: database unavailable: %s", exc)
        return JsonResponse({"status": "unavailable", "database": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


@require_GET
@never_cache  # a live number: no browser or proxy may answer with an old one
@database_errors_as_503
def pool_status(request):
    """The page's pool panel (CHAT_SHOW_POOL, a demo feature; urls.py routes here only then)."""
    return JsonResponse(pool_panel.server_connections.status())


class RoomForm(forms.ModelForm):
    class Meta:
        model = Room
        fields = ["slug", "title"]


@require_http_methods(["GET", "POST"])
@database_errors_as_503
def rooms(request):
    if request.method == "GET":
        return JsonResponse({"rooms": store.list_rooms(limit=1000)})
    try:
        data = json.loads(request.body)
    except ValueError:
        return error(400, "invalid_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return error(400, "invalid_body", 'send a JSON object: {"slug": "...", "title": "..."}')
    form = RoomForm(data)
    if not form.is_valid():
        fields = form.errors.get_json_data()
        if any(e["code"] == "unique" for e in fields.get("slug", [])):
            return error(409, "room_exists", f"room {data.get('slug')!r} already exists")
        return error(400, "invalid_room", "the room is invalid", fields=fields)
    try:
        room = form.save()
    except IntegrityError:  # created by someone else since the form's check
        return error(409, "room_exists", f"room {form.cleaned_data['slug']!r} already exists")
    return JsonResponse(room.as_dict(), status=201)


@require_GET
@database_errors_as_503
def room_messages(request, slug):
    try:
        limit = int(request.GET.get("limit", 20))
    except ValueError:
        limit = 0
    if not 1 <= limit <= settings.CHAT_HISTORY_MAX:
        return error(400, "invalid_limit", f"limit must be 1-{settings.CHAT_HISTORY_MAX}")
    room = store.find_room(slug)
    if room is None:
        return error(404, "room_not_found", f"no room {slug!r}")
    return JsonResponse({"room": room.slug, "messages": store.latest_messages(room.id, limit)})


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: the API's JSON error shape instead of Django's HTML page."""
    return error(
        403,
        "csrf_failed",
        f"CSRF check failed ({reason}); GET / first and send its csrftoken cookie back as X-CSRFToken",
    )
