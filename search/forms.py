from django import forms

from search.ranking import MAX_K, MAX_OFFSET
from search.selectors import MAX_QUERY_CHARS


class SearchForm(forms.Form):
    """The search page's query string. Text, k, offset and source are checked by the selectors
    (not here), so the pages and the API give the same message for the same mistake."""

    q = forms.CharField(required=False, label="Search")
    model = forms.CharField(required=False, max_length=64)
    k = forms.IntegerField(required=False, initial=20)
    offset = forms.IntegerField(required=False, initial=0)
    source = forms.CharField(required=False)
    min_score = forms.FloatField(required=False, min_value=-1, max_value=1)
    sort = forms.CharField(required=False)  # "relevance" | "date", checked by the selectors
    hybrid = forms.BooleanField(required=False)  # meaning and words in one ranking

    # For the template's input bounds.
    max_k = MAX_K
    max_offset = MAX_OFFSET
    max_query_chars = MAX_QUERY_CHARS


class ImageQueryForm(forms.Form):
    image = forms.FileField(label="Search with an image")


class SavedSearchForm(forms.Form):
    """Save the search on the page as a collection (``search.smart``)."""

    name = forms.CharField(max_length=120, label="Name")
    q = forms.CharField(max_length=MAX_QUERY_CHARS)
    model = forms.CharField(required=False, max_length=64)
    source = forms.CharField(required=False, max_length=16)
    hybrid = forms.BooleanField(required=False)
    min_score = forms.FloatField(required=False, min_value=-1, max_value=1)
    visibility = forms.CharField(required=False, max_length=16)
