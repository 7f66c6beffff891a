from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"

    def ready(self) -> None:
        from gallery import hooks
        from workers.signals import embedding_model_deleting

        # The image page's "similar" strip is search's, asked by gallery through its hook.
        hooks.images_similar_register(_images_similar)
        embedding_model_deleting.connect(
            _caption_vectors_delete, dispatch_uid="search_caption_vectors_delete"
        )


def _images_similar(user: User | AnonymousUser, image_id: int, k: int) -> list:
    from search.ranking import SearchRequest
    from search.selectors import images_similar

    return list(images_similar(user=user, image_id=image_id, search=SearchRequest(k=k)).hits)


def _caption_vectors_delete(sender: object, *, model_id: str, **kwargs: object) -> None:
    """A forgotten model's caption vectors go with its image embeddings, in one transaction."""
    from search.models import CaptionEmbedding

    CaptionEmbedding.objects.filter(model_id=model_id).delete()
