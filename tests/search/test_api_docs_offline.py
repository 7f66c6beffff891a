"""/api/docs works with no internet: Swagger UI's files come from this site, not a CDN."""

from __future__ import annotations

import re
import urllib.request

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:  # loopback
        return response.status, response.read().decode(errors="replace")


def test_api_docs_load_every_asset_from_this_site(live_server) -> None:
    status, html = get(f"{live_server.url}/api/docs")
    assert status == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is loaded from another site"
        assert get(f"{live_server.url}{asset}")[0] == 200, asset
