"""Writes for accounts: API tokens, the e-mail address and the password-reset mail."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from gallery.models import ApiToken
from gallery.selectors import user_email_taken
from kernel.errors import Conflict, InvalidInput


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the token, which is not kept."""
    raw = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name[:100], key_hash=ApiToken.hash(raw), prefix=raw[:8]
    )
    return token, raw


def api_token_mark_used(*, token: ApiToken) -> None:
    # At most one write per token every few minutes, not one per API request.
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


def api_token_revoke(*, user: User, token_id: int) -> bool:
    """Delete one of ``user``'s tokens; another user's token id does nothing."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)


EMAIL_MAX_LENGTH = 254  # the user table's column


def user_email_set(*, user: User, email: str) -> str:
    """Set ``user``'s e-mail address, where password-reset links go ("" removes it); returns
    the address as stored. Refuses one that is not an address, or that another account uses in
    any case: a reset would mail both accounts' links to it."""
    email = BaseUserManager.normalize_email(email.strip())
    if email:
        try:
            if len(email) > EMAIL_MAX_LENGTH:
                raise ValidationError("too long")
            validate_email(email)
        except ValidationError:
            raise InvalidInput(f"{email[:60]!r} is not an e-mail address") from None
        if user_email_taken(email=email, exclude_user=user):
            raise Conflict("Another account uses that e-mail address; give another one.")
    get_user_model().objects.filter(pk=user.pk).update(email=email)
    user.email = email
    return email


@dataclass(frozen=True)
class PasswordResetMail:
    """What a reset mail needs besides the user's row: where it goes and the site's address."""

    user_id: int
    email: str
    domain: str
    site_name: str
    use_https: bool


def user_password_reset_mail_send(*, mail: PasswordResetMail) -> bool:
    """Render and send one reset mail with a fresh token (the token never waits in the broker).

    False, and nothing sent, when the account changed meanwhile: gone, inactive, without a
    usable password, or with another address (the link must reach only whoever asked).
    """
    user = get_user_model().objects.filter(pk=mail.user_id, is_active=True).first()
    if user is None or not user.has_usable_password():
        return False
    if (getattr(user, user.get_email_field_name(), "") or "").lower() != mail.email.lower():
        return False
    context = {
        "email": mail.email,
        "domain": mail.domain,
        "site_name": mail.site_name,
        "uid": urlsafe_base64_encode(force_bytes(user.pk)),
        "user": user,
        "token": default_token_generator.make_token(user),
        "protocol": "https" if mail.use_https else "http",
    }
    # Django's own rendering and sending, with the templates PasswordResetView uses; it logs
    # a failed send ("Failed to send password reset email to <id>") rather than raising.
    PasswordResetForm().send_mail(
        "registration/password_reset_subject.txt",
        "registration/password_reset_email.html",
        context,
        None,
        mail.email,
    )
    return True
