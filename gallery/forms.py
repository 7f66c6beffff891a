"""The gallery's forms: uploads, images' details, collections, selection mode, API tokens, the
browse page and accounts. The image files themselves are checked in ``gallery.decoding``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from gallery.models import ApiToken, Collection, CollectionItem, Image
from gallery.selectors import user_email_taken


class UploadForm(forms.Form):
    file = forms.FileField(label="Image")
    visibility = forms.ChoiceField(
        choices=Image.Visibility.choices,
        initial=Image.Visibility.PRIVATE,
        help_text=(
            "Private images are seen and searched by you alone on this site; the site's "
            "administrators can open them in its admin pages."
        ),
    )


# --- Collections and tokens: every POST is parsed by a form, so bad input is a 400 with a
# message (a NUL byte, a number that is not one, an unknown visibility), never a 500.

_DB_INT_MAX = 2**31 - 1  # ids are PostgreSQL integers


def _id_field(*, required: bool = True) -> forms.IntegerField:
    return forms.IntegerField(required=required, min_value=1, max_value=_DB_INT_MAX)


class CollectionCreateForm(forms.Form):
    name = forms.CharField(max_length=Collection._meta.get_field("name").max_length)
    description = forms.CharField(required=False, max_length=5000)
    visibility = forms.ChoiceField(choices=Collection.Visibility.choices, required=False)

    def clean_visibility(self) -> str:
        return self.cleaned_data.get("visibility") or Collection.Visibility.PRIVATE


class CollectionEditForm(forms.Form):
    remove = _id_field(required=False)
    visibility = forms.ChoiceField(choices=Collection.Visibility.choices, required=False)


class _CollectionTargetForm(forms.Form):
    """An existing collection or a new one by name, and the query that found the images."""

    missing_target = "choose a collection"
    collection_id = _id_field(required=False)
    new_name = forms.CharField(
        required=False, max_length=Collection._meta.get_field("name").max_length
    )
    query = forms.CharField(
        required=False, max_length=CollectionItem._meta.get_field("query").max_length
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not self.errors and not data.get("new_name") and data.get("collection_id") is None:
            raise forms.ValidationError(self.missing_target)
        return data


class CollectionAddForm(_CollectionTargetForm):
    """Save one search result into an existing collection or into a new one by name."""

    image_id = _id_field()


class ImageIdsField(forms.Field):
    """Repeated ``image_id`` values (selection mode), each a positive database id."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: object) -> list[int]:
        values = value if isinstance(value, list | tuple) else [value] if value else []
        ids = []
        for raw in values:
            try:
                number = int(str(raw))
            except ValueError:
                raise forms.ValidationError(f"{str(raw)[:20]!r} is not an image id") from None
            if not 1 <= number <= _DB_INT_MAX:
                raise forms.ValidationError(f"{number} is not an image id")
            ids.append(number)
        return ids

    def validate(self, value: list[int]) -> None:
        if not value:
            raise forms.ValidationError("select at least one image")


class SelectionDeleteForm(forms.Form):
    image_id = ImageIdsField()


class SelectionSaveForm(_CollectionTargetForm):
    """Save the selected images into an existing collection or into a new one by name."""

    missing_target = "choose a collection or name a new one"
    image_id = ImageIdsField()


class TokenCreateForm(forms.Form):
    name = forms.CharField(required=False, max_length=ApiToken._meta.get_field("name").max_length)


class TokenRevokeForm(forms.Form):
    revoke = _id_field()


def form_error_message(form: forms.Form) -> str:
    """The first error of a bound, invalid form as one line for a message."""
    field, errors = next(iter(form.errors.items()))
    text = " ".join(str(error) for error in errors)
    return text if field == "__all__" else f"{field.replace('_', ' ')}: {text}"


class ImageVisibilityForm(forms.Form):
    visibility = forms.ChoiceField(choices=Image.Visibility.choices)


class ImageDetailsForm(forms.Form):
    """The owner's title and description of an image; both may be cleared."""

    title = forms.CharField(
        required=False,
        max_length=Image._meta.get_field("title").max_length,
        help_text="Shown as the image's name and read out as its description by screen readers.",
    )
    description = forms.CharField(
        required=False,
        max_length=Image._meta.get_field("description").max_length,
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class CollectionDetailsForm(forms.Form):
    name = forms.CharField(max_length=Collection._meta.get_field("name").max_length)
    description = forms.CharField(
        required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 3})
    )


class CollectionItemNoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=CollectionItem._meta.get_field("note").max_length,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class CollectionItemMoveForm(forms.Form):
    direction = forms.ChoiceField(choices=[("earlier", "earlier"), ("later", "later")])
    # The 1-based place the page showed, so a resent form moves nothing twice.
    index = _id_field(required=False)


class BrowseForm(forms.Form):
    """The browse page's query string: which images, and which page of them."""

    show = forms.ChoiceField(
        required=False, choices=[(v, v) for v in ("all", "mine", "dataset", "public")]
    )
    page = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    # Pages 1..pages at once: the address "Older images" leaves behind, so back, reload or a
    # copied link show everything that was on screen. Bounded: one page is 60 rows.
    pages = forms.IntegerField(required=False, min_value=1, max_value=50)


# --- Accounts


class SignupForm(UserCreationForm):
    """Sign-up with an optional e-mail address: without one, a forgotten password cannot be
    reset (no mail says so either way)."""

    email = forms.EmailField(
        required=False,
        max_length=254,
        help_text="Optional: where a password-reset link is sent; shown to no one else.",
    )

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = BaseUserManager.normalize_email(self.cleaned_data.get("email") or "")
        if email and user_email_taken(email=email):
            raise forms.ValidationError("Another account uses that e-mail address.")
        return email


class EmailChangeForm(forms.Form):
    """A new e-mail address (empty removes it), confirmed with the current password: whoever
    sets the address can reset the password, so a borrowed session alone must not."""

    email = forms.EmailField(required=False, max_length=254, label="E-mail address")
    password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your current password.")
        return password
