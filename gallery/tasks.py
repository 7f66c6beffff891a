"""Celery tasks of the gallery: thin wrappers around its services, and their queueing."""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.db import transaction

from gallery.services.accounts import PasswordResetMail, user_password_reset_mail_send
from kernel.broker import BROKER_ERRORS

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def password_reset_mail_send_task(mail: dict[str, object]) -> bool:
    """Send one password-reset mail (see
    ``gallery.services.accounts.user_password_reset_mail_send``)."""
    return user_password_reset_mail_send(mail=PasswordResetMail(**mail))  # type: ignore[arg-type]


def password_reset_mail_queue(*, mail: PasswordResetMail) -> None:
    """Send the reset mail from a worker once the request's transaction commits, so the
    request answers at once and a slow or failing mail server never reaches it. With the broker
    away, the mail is sent here instead (late beats never)."""

    def send() -> None:
        try:
            password_reset_mail_send_task.apply_async(kwargs={"mail": asdict(mail)})
        except BROKER_ERRORS as exc:
            logger.warning("broker unavailable (%s): sending the reset mail in the request", exc)
            user_password_reset_mail_send(mail=mail)

    transaction.on_commit(send)
