"""Views reading presence from the process's NoLag client (connected on first use)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from nolag.contrib import django as presence


def who_is_online(request: HttpRequest) -> HttpResponse:
    """The page; the template reads `nolag_online` from the context processor."""
    return render(request, "online.html", {"room": settings.NOLAG["ROOM"]})


def online_json(request: HttpRequest) -> JsonResponse:
    """Who is online in the configured room (or ?room=...), as JSON: the keys of
    `nolag presence list --json` and of the REST answer (docs/api.md)."""
    room = request.GET.get("room") or settings.NOLAG["ROOM"]
    people = presence.online(room)
    return JsonResponse(
        {"roomId": room, "actors": [p.to_dict() for p in people], "count": len(people)}
    )
