from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Workers"

    def ready(self) -> None:
        from gallery import hooks
        from gallery.signals import images_added
        from workers import metrics, queueing, selectors

        # Partitions and indexes follow the model registry, not a migration: registering a
        # model (one entry in encoders.registry) gets it a partition and an index on the next
        # migrate, inline while it is small;
        # a big one is built online by `manage.py embedding_index_build`.
        post_migrate.connect(_ensure_indexes, sender=self, dispatch_uid="workers_hnsw_indexes")
        # gallery tells the index about new images, and asks it about them, without importing
        # it: imports only go down (search > workers > gallery).
        images_added.connect(queueing.images_added_enqueue, dispatch_uid="workers_images_added")
        # The scrape-time gauges of /metrics (embedding jobs, broker queue, live workers).
        metrics.register()
        hooks.image_index_register(
            hooks.ImageIndexHooks(
                image_states=lambda image_id: selectors.image_index_status(image_id=image_id),
                default_model_unavailable=selectors.default_model_if_unavailable,
                images_conditions=selectors.images_index_conditions,
            )
        )


def _ensure_indexes(
    sender: AppConfig, using: str = "default", verbosity: int = 1, **kwargs: Any
) -> None:
    from workers.indexes import embedding_indexes_after_migrate
    from workers.partitions import partitions_ensure
    from workers.services import embedding_models_sync_from_settings

    stdout = kwargs.get("stdout") if verbosity else None
    # Each registered model's partition of the embedding table, before its index.
    partitions_ensure(using=using)
    embedding_indexes_after_migrate(using=using, stdout=stdout)
    embedding_models_sync_from_settings()
