from django import forms

from gallery.models import Image


class UploadForm(forms.Form):
    file = forms.FileField(label="Image")
    visibility = forms.ChoiceField(
        choices=Image.Visibility.choices,
        initial=Image.Visibility.PRIVATE,
        help_text="Private images are seen and searched by you alone.",
    )
