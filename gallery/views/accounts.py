"""Sign-up, the account page, API tokens, and the rate limit on password-reset mail (the
password pages themselves are Django's views with this site's templates)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordResetForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from django_ratelimit.decorators import ratelimit

from gallery.forms import (
    EmailChangeForm,
    SignupForm,
    TokenCreateForm,
    TokenRevokeForm,
    form_error_message,
)
from gallery.selectors import (
    account_overview,
    api_tokens_of,
)
from gallery.services.accounts import (
    PasswordResetMail,
    api_token_create,
    api_token_revoke,
    user_email_set,
)
from gallery.tasks import password_reset_mail_queue
from gallery.views._common import AuthenticatedHttpRequest
from kernel.errors import ApplicationError


def _signup_rate(group: str, request: HttpRequest) -> str:
    return settings.RATELIMIT_SIGNUP


def _token_create_rate(group: str, request: HttpRequest) -> str | None:
    # Creating tokens is limited; revoking them never is.
    return None if "revoke" in request.POST else settings.RATELIMIT_TOKEN_CREATE


@require_http_methods(["GET", "POST"])
@ratelimit(group="signup", key="ip", rate=_signup_rate, method="POST")
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        # Named because django-axes adds a backend; it only watches sign-ins, never signs in.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


# Where a new token waits between the POST that made it and the page that shows it (once).
NEW_TOKEN_SESSION_KEY = "api_token_new"  # noqa: S105 - the name of a session key


@login_required
@require_http_methods(["GET", "POST"])
@ratelimit(group="token-create", key="user", rate=_token_create_rate, method="POST")
def api_tokens(request: AuthenticatedHttpRequest) -> HttpResponse:
    """List, create and revoke the signed-in user's API tokens; a new token is shown once.

    Both POSTs redirect (a reload must not make another token): the new token rides in the
    session to the next GET, which takes it out, so it is shown exactly once.
    """
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
                _, raw = api_token_create(user=request.user, name=name)
                request.session[NEW_TOKEN_SESSION_KEY] = raw
                return redirect("api-tokens")
            messages.error(request, form_error_message(create))
            status = 400
    new_token = request.session.pop(NEW_TOKEN_SESSION_KEY, None) if status == 200 else None
    return render(
        request,
        "gallery/api_tokens.html",
        {"tokens": api_tokens_of(user=request.user), "new_token": new_token},
        status=status,
    )


def _mail_rate(group: str, request: HttpRequest) -> str:
    return settings.RATELIMIT_PASSWORD_RESET


def _reset_address(group: str, request: HttpRequest) -> str:
    return request.POST.get("email", "").strip().lower()


class QueuedPasswordResetForm(PasswordResetForm):
    """Django's reset form, its mail handed to a worker instead of sent during the request."""

    def send_mail(  # type: ignore[override]
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        # The token is made again by the worker: no live reset link waits in the broker.
        mail = PasswordResetMail(
            user_id=context["user"].pk,
            email=to_email,
            domain=context["domain"],
            site_name=context["site_name"],
            use_https=context["protocol"] == "https",
        )
        password_reset_mail_queue(mail=mail)


# Django's view, which answers the same whether or not an account has the address. Limited per
# client address and per e-mail address asked for, so the form cannot be used to send floods of
# mail (a 429 is the same for every address, so it tells nothing either).
password_reset = ratelimit(group="password-reset", key="ip", rate=_mail_rate, method="POST")(
    ratelimit(group="password-reset-to", key=_reset_address, rate=_mail_rate, method="POST")(
        auth_views.PasswordResetView.as_view(form_class=QueuedPasswordResetForm)
    )
)


@login_required
@require_http_methods(["GET", "POST"])
# Changing the address checks the current password: limited like reset mail, per user.
@ratelimit(group="email-change", key="user", rate=_mail_rate, method="POST")
def account(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The user's uploads, collections, tokens and index summary; e-mail address and password."""
    user = request.user
    bound = request.POST if request.method == "POST" else None
    form = EmailChangeForm(bound, user=user, initial={"email": getattr(user, "email", "")})
    status = 200
    if bound is not None:
        status = 400
        if form.is_valid():
            try:
                email = user_email_set(user=user, email=form.cleaned_data["email"])
            except ApplicationError as exc:
                form.add_error("email", exc.message)
                status = exc.status
            else:
                messages.success(
                    request,
                    f"E-mail address set to {email}." if email else "E-mail address removed.",
                )
                return redirect("account")
    context = {"overview": account_overview(user=user), "email_form": form}
    return render(request, "gallery/account.html", context, status=status)
