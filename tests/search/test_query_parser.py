"""The search bar's query language (search/query_parser.py): a table of queries as people type
them, in English and Vietnamese, with the words left for meaning and the chips expected."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from search.query_parser import ParsedQuery, fold, places_lookup_from, query_parse

NOW = datetime(2026, 12, 2, 15, 30)  # a Wednesday
PLACES = places_lookup_from(
    ["Hanoi", "Paris", "Hoàn Kiếm", "Vietnam", "France", "Da Nang", "Ho Chi Minh City", "VN"]
)

D, P, X, M = "date", "place", "exclude", "must"

TABLE: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    # Dates, English.
    ("beach July 2023", "beach", [(D, "July 2023", "2023-07-01..2023-08-01")]),
    ("snow 2019", "snow", [(D, "2019", "2019-01-01..2020-01-01")]),
    ("beach in July 2023", "beach", [(D, "in July 2023", "2023-07-01..2023-08-01")]),
    ("photos from 2019", "photos", [(D, "from 2019", "2019-01-01..2020-01-01")]),
    ("last summer", "", [(D, "last summer", "2026-06-01..2026-09-01")]),
    ("cats during last summer", "cats", [(D, "during last summer", "2026-06-01..2026-09-01")]),
    ("this winter", "", [(D, "this winter", "2026-12-01..2027-03-01")]),
    ("summer of 2021", "", [(D, "summer of 2021", "2021-06-01..2021-09-01")]),
    ("from 2019 to 2021 mountains", "mountains",
     [(D, "from 2019 to 2021", "2019-01-01..2022-01-01")]),
    ("from 2021 to 2019", "", [(D, "from 2021 to 2019", "2019-01-01..2022-01-01")]),
    ("between May 2020 and August 2020 beach", "beach",
     [(D, "between May 2020 and August 2020", "2020-05-01..2020-09-01")]),
    # A range not finished (yet): its one date is the chip, and its words are not searched for.
    ("beach between 2020 and", "beach", [(D, "between 2020 and", "2020-01-01..2021-01-01")]),
    ("between 2020 and beach", "beach", [(D, "between 2020 and", "2020-01-01..2021-01-01")]),
    ("dogs from 2019 to", "dogs", [(D, "from 2019 to", "2019-01-01..2020-01-01")]),
    ("dogs 2019 to cats", "dogs to cats", [(D, "2019", "2019-01-01..2020-01-01")]),
    ("biển từ năm 2019 đến", "biển", [(D, "từ năm 2019 đến", "2019-01-01..")]),
    ("before 2020 snow", "snow", [(D, "before 2020", "..2020-01-01")]),
    ("snow since 2021", "snow", [(D, "since 2021", "2021-01-01..")]),
    ("yesterday", "", [(D, "yesterday", "2026-12-01..2026-12-02")]),
    ("3 days ago", "", [(D, "3 days ago", "2026-11-29..2026-11-30")]),
    ("last week", "", [(D, "last week", "2026-11-23..2026-11-30")]),
    ("last month", "", [(D, "last month", "2026-11-01..2026-12-01")]),
    ("2023-07-14 fireworks", "fireworks", [(D, "2023-07-14", "2023-07-14..2023-07-15")]),
    ("dogs on 14 July 2023", "dogs", [(D, "on 14 July 2023", "2023-07-14..2023-07-15")]),
    ("7/2023 beach", "beach", [(D, "7/2023", "2023-07-01..2023-08-01")]),
    ("may 2019", "", [(D, "may 2019", "2019-05-01..2019-06-01")]),
    # Dates, Vietnamese.
    ("tháng 7 năm 2023", "", [(D, "tháng 7 năm 2023", "2023-07-01..2023-08-01")]),
    ("biển tháng 7 năm 2023", "biển", [(D, "tháng 7 năm 2023", "2023-07-01..2023-08-01")]),
    ("chó vào tháng 7 năm 2023", "chó", [(D, "vào tháng 7 năm 2023", "2023-07-01..2023-08-01")]),
    ("ảnh trong năm 2019", "ảnh", [(D, "trong năm 2019", "2019-01-01..2020-01-01")]),
    ("hè năm ngoái", "", [(D, "hè năm ngoái", "2025-06-01..2025-09-01")]),
    ("mùa đông năm 2022", "", [(D, "mùa đông năm 2022", "2022-12-01..2023-03-01")]),
    ("mèo trong mùa hè năm 2023", "mèo",
     [(D, "trong mùa hè năm 2023", "2023-06-01..2023-09-01")]),
    ("từ năm 2019 đến năm 2021", "", [(D, "từ năm 2019 đến năm 2021", "2019-01-01..2022-01-01")]),
    ("ảnh chụp trước năm 2020", "ảnh chụp", [(D, "trước năm 2020", "..2020-01-01")]),
    ("sau năm 2021", "", [(D, "sau năm 2021", "2021-01-01..")]),
    ("hôm qua", "", [(D, "hôm qua", "2026-12-01..2026-12-02")]),
    ("tuần trước", "", [(D, "tuần trước", "2026-11-23..2026-11-30")]),
    ("tháng trước", "", [(D, "tháng trước", "2026-11-01..2026-12-01")]),
    ("năm ngoái", "", [(D, "năm ngoái", "2025-01-01..2026-01-01")]),
    ("ngày 14 tháng 7 năm 2023", "", [(D, "ngày 14 tháng 7 năm 2023", "2023-07-14..2023-07-15")]),
    ("tháng 12/2022", "", [(D, "tháng 12/2022", "2022-12-01..2023-01-01")]),
    # Places: only names the lookup knows; the preposition goes into the chip.
    ("dog in Hanoi", "dog", [(P, "in Hanoi", "Hanoi")]),
    ("Paris at night", "at night", [(P, "Paris", "Paris")]),
    ("chó ở Hà Nội", "chó", [(P, "ở Hà Nội", "Hanoi")]),
    ("phố cổ tại hoàn kiếm", "phố cổ", [(P, "tại hoàn kiếm", "Hoàn Kiếm")]),
    ("sunset in Ho Chi Minh City", "sunset", [(P, "in Ho Chi Minh City", "Ho Chi Minh City")]),
    ("a man in a red hat", "a man in a red hat", []),
    ("vn flag", "vn flag", []),
    # Negatives and exact words.
    ("beach -people", "beach", [(X, "-people", "people")]),
    ("city without cars", "city", [(X, "without cars", "cars")]),
    ("street -\"red car\"", "street", [(X, "-\"red car\"", "red car")]),
    ("phố không có xe máy", "phố", [(X, "không có xe máy", "xe máy")]),
    ("hồ ngoại trừ thuyền", "hồ", [(X, "ngoại trừ thuyền", "thuyền")]),
    ("\"red car\" street", "red car street", [(M, "\"red car\"", "red car")]),
    ("“áo dài” tết", "áo dài tết", [(M, "“áo dài”", "áo dài")]),
    ("a-b test", "a-b test", []),
    # All together.
    ("beach in Da Nang without umbrellas", "beach",
     [(P, "in Da Nang", "Da Nang"), (X, "without umbrellas", "umbrellas")]),
    ("beach in Paris in 2019 without people", "beach",
     [(P, "in Paris", "Paris"), (D, "in 2019", "2019-01-01..2020-01-01"),
      (X, "without people", "people")]),
    ("hôm qua ở Paris", "",
     [(D, "hôm qua", "2026-12-01..2026-12-02"), (P, "ở Paris", "Paris")]),
    # Not dates: words dateparser alone would read as dates.
    ("people march in the street", "people march in the street", []),
    ("a cat sat on the mat", "a cat sat on the mat", []),
    ("a 5 year old boy", "a 5 year old boy", []),
    ("sunday market", "sunday market", []),
    ("man with 2 dogs", "man with 2 dogs", []),
    ("10 people", "10 people", []),
    ("two dogs running on a beach at sunset", "two dogs running on a beach at sunset", []),
    ("without", "without", []),
]  # fmt: skip


def _parse(query: str) -> ParsedQuery:
    return query_parse(query, now=NOW, place_lookup=PLACES)


@pytest.mark.parametrize(("query", "text", "chips"), TABLE, ids=[row[0] for row in TABLE])
def test_query_table(query: str, text: str, chips: list[tuple[str, str, str]]) -> None:
    parsed = _parse(query)
    assert parsed.text == text
    assert [(c.kind, c.text, c.value) for c in parsed.chips] == chips


def test_table_is_long_enough_in_both_languages() -> None:
    vietnamese = [q for q, _, _ in TABLE if fold(q) != q.casefold().replace(" ", "")]
    assert len(TABLE) >= 40
    assert len(vietnamese) >= 15


def test_fields_follow_the_chips() -> None:
    parsed = _parse('beach in Hanoi July 2023 -people "red car"')
    assert parsed.taken_after == date(2023, 7, 1)
    assert parsed.taken_before == date(2023, 8, 1)
    assert parsed.places == ("Hanoi",)
    assert parsed.exclude == ("people",)
    assert parsed.must == ("red car",)
    assert parsed.text == "beach red car"


def test_two_dates_narrow_and_disjoint_dates_filter_nothing() -> None:
    both = _parse("2023 July 2023")
    assert (both.taken_after, both.taken_before) == (date(2023, 7, 1), date(2023, 8, 1))
    disjoint = _parse("2019 2020")
    assert (disjoint.taken_after, disjoint.taken_before) == (None, None)
    assert disjoint.problems


def test_now_is_what_relative_dates_count_from() -> None:
    in_july = query_parse("last summer", now=datetime(2026, 7, 15))
    assert (in_july.taken_after, in_july.taken_before) == (date(2025, 6, 1), date(2025, 9, 1))
    january = query_parse("this winter", now=datetime(2027, 1, 10))
    assert (january.taken_after, january.taken_before) == (date(2026, 12, 1), date(2027, 3, 1))


def test_removing_a_chip_gives_the_query_without_it() -> None:
    parsed = _parse("beach in Hanoi July 2023 -people")
    by_kind = {chip.kind: chip for chip in parsed.chips}
    assert parsed.without(by_kind["place"]) == "beach July 2023 -people"
    assert parsed.without(by_kind["date"]) == "beach in Hanoi -people"
    assert parsed.without(by_kind["exclude"]) == "beach in Hanoi July 2023"


def test_without_a_lookup_no_place_is_recognised() -> None:
    assert query_parse("dog in Hanoi", now=NOW).chips == ()


def test_a_query_of_chips_only_still_has_words_to_embed() -> None:
    assert _parse("in Hanoi").search_text == "Hanoi"
    assert _parse('"áo dài"').search_text == "áo dài"
    assert _parse("July 2023").search_text == "July 2023"
    assert _parse("beach July 2023").search_text == "beach"
