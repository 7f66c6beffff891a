from django import forms

from search.selectors import MAX_K, MAX_OFFSET, MAX_QUERY_CHARS


class SearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=MAX_QUERY_CHARS, label="Search")
    model = forms.CharField(required=False)
    k = forms.IntegerField(required=False, min_value=1, max_value=MAX_K, initial=20)
    offset = forms.IntegerField(required=False, min_value=0, max_value=MAX_OFFSET, initial=0)
    source = forms.ChoiceField(
        required=False,
        choices=[("", "Everything"), ("dataset", "Data set"), ("mine", "My uploads")],
    )
    min_score = forms.FloatField(required=False, min_value=-1, max_value=1)


class ImageQueryForm(forms.Form):
    image = forms.FileField(label="Search with an image")
