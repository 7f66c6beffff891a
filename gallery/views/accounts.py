"""Sign-up, the account pages and API tokens."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from django_ratelimit.decorators import ratelimit

from gallery.forms import (
    TokenCreateForm,
    TokenRevokeForm,
    form_error_message,
)
from gallery.selectors import (
    api_tokens_of,
)
from gallery.services import (
    api_token_create,
    api_token_revoke,
)


def _signup_rate(group: str, request: HttpRequest) -> str:
    return settings.RATELIMIT_SIGNUP


def _token_create_rate(group: str, request: HttpRequest) -> str | None:
    # Creating tokens is limited; revoking them never is.
    return None if "revoke" in request.POST else settings.RATELIMIT_TOKEN_CREATE


@require_http_methods(["GET", "POST"])
@ratelimit(group="signup", key="ip", rate=_signup_rate, method="POST")
def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        # Named because django-axes adds a backend; it only watches sign-ins, never signs in.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
@ratelimit(group="token-create", key="user", rate=_token_create_rate, method="POST")
def api_tokens(request: HttpRequest) -> HttpResponse:
    """List, create and revoke the signed-in user's API tokens; a new token is shown once."""
    new_token = None
    status = 200
    if request.method == "POST":
        if "revoke" in request.POST:
            revoke = TokenRevokeForm(request.POST)
            if revoke.is_valid():
                api_token_revoke(user=request.user, token_id=revoke.cleaned_data["revoke"])
                messages.success(request, "Token revoked.")
                return redirect("api-tokens")
            messages.error(request, form_error_message(revoke))
            status = 400
        else:
            create = TokenCreateForm(request.POST)
            if create.is_valid():
                name = create.cleaned_data["name"] or "API token"
                _, new_token = api_token_create(user=request.user, name=name)
            else:
                messages.error(request, form_error_message(create))
                status = 400
    return render(
        request,
        "gallery/api_tokens.html",
        {"tokens": api_tokens_of(user=request.user), "new_token": new_token},
        status=status,
    )
