"""Two pages: who is online (HTML) and the same as JSON."""

from __future__ import annotations

from django.urls import path

from presence_site import views

urlpatterns = [
    path("", views.who_is_online, name="online"),
    path("api/online", views.online_json, name="online-json"),
]
