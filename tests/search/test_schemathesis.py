"""Schemathesis against a live server: every operation of /api/openapi.json, with generated
valid and invalid inputs, anonymously and with an API token; all of schemathesis's checks (no
server errors, statuses, content types, bodies and headers as the schema declares, invalid
input refused, valid input accepted). A bounded number of examples keeps it under a minute."""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from PIL import Image as PILImage
from schemathesis.generation import GenerationMode

from gallery.models import Image
from gallery.services import api_token_create
from search.services import embeddings_store
from tests.factories import ImageFactory, UserFactory

CLIP = "clip-vit-base-patch32"
_png = io.BytesIO()
PILImage.new("RGB", (32, 24), (30, 120, 200)).save(_png, "PNG")
QUERY_PNG = _png.getvalue()
EXAMPLES = 40


@pytest.fixture
def token(transactional_db, tiny_models, settings) -> str:
    """Public and private embedded images, a token for the private one's owner; image search
    unlimited, since the run sends many more than an anonymous client may."""
    settings.RATELIMIT_ANONYMOUS_IMAGE_SEARCH = None
    public = Image.objects.bulk_create(ImageFactory.build_batch(3, dataset=True, file="x.jpg"))
    owner = UserFactory()
    private = ImageFactory(owner=owner)
    ids = [i.pk for i in [*public, private]]
    vectors = np.random.default_rng(3).normal(size=(len(ids), 512))
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=vectors)
    _, raw = api_token_create(user=owner, name="schemathesis")
    return raw


def check_operation(operation, mode: GenerationMode, token: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
            # The schema can say "a file", not "bytes that decode as an image": a schema-valid
            # query image is a real one (random bytes are a 400).
            case.body["image"] = QUERY_PNG
        case.call_and_validate()
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"})

    try:
        run()
    except Unsatisfiable:
        # An operation without inputs (GET /api/models) has no invalid request to make.
        assert mode is GenerationMode.NEGATIVE


def test_the_api_keeps_to_its_schema(live_server, token: str) -> None:
    # Loaded from the live server as a client would; operations run one by one under
    # hypothesis (schemathesis's pytest fixture loader does not support this pytest).
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/search", "/api/search/image", "/api/models"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check_operation(operation, mode, token)


def test_what_the_run_found_stays_fixed(client, token: str) -> None:
    # A valid RFC 3339 offset beyond PostgreSQL's +-15:59 was a 500; bounds beyond UTC's range
    # are clamped, not an overflow.
    for bound in ("0707-07-22T20:01:33-19:23", "0001-01-01T00:00:00+01:00"):
        assert client.get("/api/search", {"q": "dog", "uploaded_after": bound}).status_code == 200
    before = "9999-12-31T23:59:59-01:00"
    assert client.get("/api/search", {"q": "dog", "uploaded_before": before}).status_code == 200
    # The schema names the models one may use, and says a NUL in q is invalid.
    schema = client.get("/api/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert parameters["model"]["schema"]["enum"] == [CLIP]
    assert "\\u0000" in parameters["q"]["schema"]["pattern"]
