from django.urls import path

from search import views

urlpatterns = [
    path("embeddings/progress", views.embedding_progress_json, name="embedding-progress"),
]
