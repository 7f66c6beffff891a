from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"

    def ready(self) -> None:
        # Indexes follow the model registry, not a migration: registering a model (one entry
        # in encoders.registry) gets it an index on the next migrate.
        post_migrate.connect(_ensure_indexes, sender=self, dispatch_uid="search_hnsw_indexes")


def _ensure_indexes(sender: AppConfig, using: str = "default", **kwargs: object) -> None:
    from search.indexes import embedding_indexes_ensure
    from search.services import embedding_models_sync_from_settings

    embedding_indexes_ensure(using=using)
    embedding_models_sync_from_settings()
