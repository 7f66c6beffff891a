"""What gallery's pages show of the apps above it, asked without importing them (imports only
go down: search > workers > gallery). The embedding index (workers/) and search register their
parts here in their ``AppConfig.ready()``; until they do (gallery alone), images have no index
state and no similar images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q


class ImageIndexState(Protocol):
    """Where one image stands with one enabled model (``workers.selectors.ImageIndexState``)."""

    @property
    def model_id(self) -> str: ...
    @property
    def state(self) -> str: ...  # "ready" | "pending" | "failed" | "blocked"
    @property
    def reason(self) -> str: ...
    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class ImagesIndexConditions:
    """Conditions on images (EXISTS subqueries on the outer row) over the enabled models, for
    counting a set of images by index state in the same query as other counts."""

    failed: Q  # failed with at least one enabled model
    complete: Q  # embedded by every enabled model


@dataclass(frozen=True)
class ImageIndexHooks:
    """The embedding index's answers about images (registered by workers/)."""

    # Per enabled model, the default first.
    image_states: Callable[[int], Sequence[ImageIndexState]]
    # The default model's id when workers cannot load it (uploads then wait for it), else None.
    default_model_unavailable: Callable[[], str | None]
    images_conditions: Callable[[], ImagesIndexConditions]


# Images similar to one (search's hits, each with ``.image``), as ``user`` may see them; raises
# kernel.errors.ApplicationError with a message for the page when it cannot answer.
SimilarImages = Callable[[User | AnonymousUser, int, int], Sequence[Any]]

_NOT_INDEXED = ImageIndexHooks(
    image_states=lambda image_id: [],
    default_model_unavailable=lambda: None,
    images_conditions=lambda: ImagesIndexConditions(failed=Q(pk__in=[]), complete=Q()),
)
_index: ImageIndexHooks = _NOT_INDEXED
_similar: SimilarImages = lambda user, image_id, k: []  # noqa: E731 - the unregistered default


def image_index_register(hooks: ImageIndexHooks) -> None:
    global _index
    _index = hooks


def image_index() -> ImageIndexHooks:
    return _index


def images_similar_register(similar: SimilarImages) -> None:
    global _similar
    _similar = similar


def images_similar(*, user: User | AnonymousUser, image_id: int, k: int) -> Sequence[Any]:
    return _similar(user, image_id, k)
