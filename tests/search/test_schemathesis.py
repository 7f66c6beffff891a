"""Schemathesis against a live server: every operation of /api/openapi.json, with generated
valid and invalid inputs, anonymously and with an API token; all of schemathesis's checks (no
server errors, statuses, content types, bodies and headers as the schema declares, invalid
input refused, valid input accepted). A bounded number of examples keeps it under a minute."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from PIL import Image as PILImage
from schemathesis.generation import GenerationMode

from gallery.models import Image
from gallery.services.accounts import api_token_create
from tests.factories import ImageFactory, UserFactory
from workers.services import embeddings_store

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


# Every control character, the whitespace either regex dialect knows, and a few plain ones.
ODD_CHARACTERS = [
    *map(chr, range(0x00, 0x21)),
    *map(chr, range(0x7F, 0xA1)),
    "\u1680", "\u2000", "\u200a", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
    "\ufeff", "é", "x",
]  # fmt: skip


@pytest.mark.parametrize("surround", ["{}", "dog{}", "{}dog{}"])
def test_the_schema_says_which_queries_the_api_takes(client, token: str, surround: str) -> None:
    # Schemathesis found q=%1E matching the pattern but refused as empty: the pattern's idea of
    # whitespace was ECMA-262's \s, the API's Python's str.strip. Both now name the same set.
    schema = client.get("/api/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    pattern = re.compile(parameters["q"]["schema"]["pattern"])
    # No \s or \S: their meaning differs between ECMA-262 and Python, so the same pattern
    # would say different things to different clients; \uXXXX escapes mean one thing.
    assert not re.search(r"\\[sS]", pattern.pattern)
    for character in ODD_CHARACTERS:
        q = surround.format(character, character)
        status = client.get("/api/search", {"q": q}).status_code
        assert (status == 200) == bool(pattern.search(q)), (repr(q), status)
        assert status in (200, 400), (repr(q), status)
    assert client.get("/api/search", {"q": "\x1e"}).json()["error"].startswith("the query is empty")
