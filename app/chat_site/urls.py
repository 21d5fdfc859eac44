from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("api/rooms", views.rooms, name="rooms"),
    path("api/rooms/<slug:slug>/messages", views.room_messages, name="room-messages"),
]
