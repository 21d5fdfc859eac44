from django.conf import settings
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("api/rooms", views.rooms, name="rooms"),
    path("api/rooms/<slug:slug>/messages", views.room_messages, name="room-messages"),
]

if settings.CHAT_SHOW_POOL:  # a demo feature (settings.py says why): otherwise 404
    urlpatterns.append(path("pool-status", views.pool_status, name="pool-status"))
