"""The search bar's query language, which nobody has to learn: plain words in, and out come
the words to search by meaning plus what the parser recognised, each as a removable chip.

- **Dates** ("July 2023", "2019", "last summer", "tháng 7 năm 2023", "from 2019 to 2021",
  "before 2020") become a range of taken dates, ``[after, before)``. Single dates are read by
  dateparser (English and Vietnamese), which also says how wide the date is (a day, a week, a
  month, a year); seasons and "from X to Y" are read here. Only phrases that look like dates
  are handed to it: a four-digit year, a numeric date or a relative word ("yesterday", "last
  month", "năm ngoái"). dateparser alone finds dates in "people march", "a cat sat on the
  mat" or "a 5 year old boy".
- **Places** ("in Hanoi", "ở Hà Nội", "Paris") are matched against the place names the
  caller knows (``place_lookup``: the names resolved from the images' GPS positions), never
  guessed: a word is a place only when some image was taken there.
- **Negatives**: ``-word``, ``-"two words"``, "without X", "except X", "không có X",
  "ngoại trừ X".
- **Exact words** in quotes (straight or curly) must appear in the image's text; they stay
  in the words searched by meaning too.

Pure Python (no Django), so it is tested as a table (tests/search/test_query_parser.py). What
``now`` is, is passed in: "last summer" depends on it.
"""

from __future__ import annotations

import calendar
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

# A place lookup: a phrase as typed ("hanoi", "Hà Nội") to the place name as stored, or None.
PlaceLookup = Callable[[str], str | None]

CHIP_KINDS = ("date", "place", "exclude", "must")
LANGUAGES = ("en", "vi")
# Longest phrase tried as a date or a place, in words ("ngày 14 tháng 7 năm 2023" is 6).
MAX_DATE_WORDS = 6
MAX_PLACE_WORDS = 4


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words a "without X" phrase stops before: they start the next part of the query.
_CLAUSE_WORDS = _word_set(
    "in at on with and from during near by to of for while ở tại trên với và từ trong vào gần của"
)
MAX_NEGATIVE_WORDS = 3

# A removed span is overwritten with this, so positions stay those of the original text and no
# phrase is read across a removed part.
_GAP = "\x1f"


@dataclass(frozen=True)
class QueryChip:
    """One recognised part of the query: ``kind`` (CHIP_KINDS), ``text`` as typed, ``value``
    as understood (a date range "2023-07-01..2023-08-01" with an exclusive end, the stored
    place name, the negative concept, the exact words), and where it sits in the query."""

    kind: str
    text: str
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class ParsedQuery:
    query: str  # as typed
    text: str  # what is left to search by meaning
    chips: tuple[QueryChip, ...] = ()
    taken_after: date | None = None  # inclusive
    taken_before: date | None = None  # exclusive
    places: tuple[str, ...] = ()  # any of them
    exclude: tuple[str, ...] = ()
    must: tuple[str, ...] = ()
    # The date phrases that made no sense as a range (e.g. "from 2021 to 2019").
    problems: tuple[str, ...] = field(default=())

    @property
    def search_text(self) -> str:
        """The words to embed: what is left, else the exact words, else the places, else the
        query as typed (a query that is all chips still needs a vector to rank by)."""
        return self.text or " ".join(self.must) or " ".join(self.places) or self.query.strip()

    def without(self, chip: QueryChip) -> str:
        """The query as typed with ``chip`` taken out: what removing the chip searches for."""
        return _squeeze(self.query[: chip.start] + " " + self.query[chip.end :])


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace(_GAP, " ")).strip()


def fold(text: str) -> str:
    """A key for comparing names as people type them: no accents, no case, no spaces or
    hyphens ("Hà Nội", "ha noi" and "Hanoi" are one key)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s\-'’.]+", "", kept.casefold())


# --- Spans -------------------------------------------------------------------------------


class _Work:
    """The query being taken apart: recognised spans are blanked out of ``text``."""

    def __init__(self, query: str) -> None:
        self.text = query
        self.chips: list[QueryChip] = []

    def take(self, start: int, end: int, kind: str, value: str) -> None:
        chip_text = self.text[start:end].strip()
        self.chips.append(QueryChip(kind, chip_text, value, start, end))
        self.text = self.text[:start] + _GAP * (end - start) + self.text[end:]

    def words(self) -> list[tuple[int, int, str]]:
        """(start, end, word) of the words still there; punctuation at a word's edges is
        not part of it."""
        found = []
        for match in re.finditer(rf"[^\s{_GAP}]+", self.text):
            word = match.group()
            lead = len(word) - len(word.lstrip(_EDGE_PUNCTUATION))
            trail = len(word) - len(word.rstrip(_EDGE_PUNCTUATION))
            if lead + trail >= len(word):
                continue
            found.append(
                (match.start() + lead, match.end() - trail, word[lead : len(word) - trail])
            )
        return found

    def phrases(self, max_words: int) -> Iterator[tuple[int, int, int, str]]:
        """(first word index, start, end, phrase) of every run of up to ``max_words`` words
        not broken by a removed span or a comma, longest first at each starting word."""
        words = self.words()
        for i in range(len(words)):
            for n in range(min(max_words, len(words) - i), 0, -1):
                start, end = words[i][0], words[i + n - 1][1]
                between = self.text[start:end]
                if _GAP in between or any(c in between for c in ",;()"):
                    continue
                yield i, start, end, between


_EDGE_PUNCTUATION = ",.;:!?()[]{}\"“”'‘’"

# --- Quotes and negatives ------------------------------------------------------------------

_QUOTED = re.compile(r'(?<![\w])(-?)["“]([^"“”]+)["”]')
_MINUS_WORD = re.compile(r"(?:(?<=\s)|^)-(\w[\w'’]*)")
_NEGATION = re.compile(
    r"(?:(?<=\s)|^)(without|except|excluding|but not|không có|ngoại trừ|trừ)\s+", re.IGNORECASE
)


def _take_quotes(work: _Work) -> None:
    for match in list(_QUOTED.finditer(work.text)):
        words = _squeeze(match.group(2))
        if not words:
            continue
        kind = "exclude" if match.group(1) else "must"
        work.take(match.start(), match.end(), kind, words)


def _take_minus_words(work: _Work) -> None:
    for match in list(_MINUS_WORD.finditer(work.text)):
        work.take(match.start(), match.end(), "exclude", match.group(1))


def _take_negations(work: _Work) -> None:
    while True:
        match = _NEGATION.search(work.text)
        if match is None:
            return
        words: list[tuple[int, int, str]] = []
        for start, end, word in work.words():
            if start < match.end():
                continue
            between = work.text[match.end() if not words else words[-1][1] : start]
            if _GAP in between or "," in between or word.casefold() in _CLAUSE_WORDS:
                break
            words.append((start, end, word))
            if len(words) == MAX_NEGATIVE_WORDS:
                break
        if not words:
            # "without" with nothing after it: a plain word, left to the meaning.
            work.text = (
                work.text[: match.start()] + " " * (match.end() - match.start())
                + work.text[match.end() :]
            )  # fmt: skip
            continue
        end = words[-1][1]
        work.take(match.start(), end, "exclude", " ".join(w for _, _, w in words))


# --- Dates -----------------------------------------------------------------------------------

_YEAR = r"(?:19|20)\d\d"
# A phrase is offered to dateparser only if it has one of these: dateparser reads "march",
# "sat on the" and "a 5 year" as dates.
_DATE_SHAPE = re.compile(
    rf"\b{_YEAR}\b|\b\d{{1,4}}[/.\-]\d{{1,2}}(?:[/.\-]\d{{1,4}})?\b"
    r"|\b(?:yesterday|today|ago|last|this|past)\b"
    r"|hôm qua|hôm nay|năm ngoái|năm nay|năm trước|tháng trước|tháng này|tuần trước|tuần này"
    r"|\d+\s*(?:ngày|tuần|tháng|năm)\s+trước",
    re.IGNORECASE,
)
# A phrase may not start or end with these: "in July 2023" is "July 2023".
_DATE_EDGE_WORDS = _word_set(
    "in on at of during the a an from to since until before after and or with vào trong từ đến"
)
# Relative words that are dates only with a unit after them ("last week", not "last").
_RELATIVE_ALONE = frozenset(["last", "this", "past"])

_SEASONS = {
    # Meteorological seasons of the northern hemisphere (the months each covers; winter
    # starts in December of its year and runs into the next).
    "spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12,
    "xuân": 3, "hè": 6, "hạ": 6, "thu": 9, "đông": 12,
}  # fmt: skip
_SEASON_EN = r"spring|summer|autumn|fall|winter"
_SEASON_VI = r"mùa\s+(?:xuân|hè|hạ|thu|đông)|(?:hè|đông)"
_SEASON_PATTERNS = [
    # last summer / this winter
    re.compile(rf"\b(?P<rel>last|this)\s+(?P<season>{_SEASON_EN})\b", re.IGNORECASE),
    # summer 2023 / summer of 2023
    re.compile(rf"\b(?P<season>{_SEASON_EN})\s+(?:of\s+)?(?P<year>{_YEAR})\b", re.IGNORECASE),
    # mùa hè năm 2023 / mùa hè 2023 / hè năm ngoái / mùa đông năm nay
    re.compile(
        rf"(?<!\w)(?P<season>{_SEASON_VI})\s+(?:năm\s+)?(?:(?P<year>{_YEAR})|(?P<relvi>ngoái|nay|trước))(?!\w)",
        re.IGNORECASE,
    ),
]
_RANGE_PATTERNS = [
    re.compile(r"\b(?:from|between)\s+(?P<a>.+?)\s+(?:to|and|until|till|-)\s+(?P<b>.+)", re.I),
    re.compile(r"(?<!\w)từ\s+(?P<a>.+?)\s+(?:đến|tới|-)\s+(?P<b>.+)", re.I),
]
_BOUND_PATTERNS = [
    (re.compile(r"\b(?P<op>before|until|after|since)\s+(?P<a>.+)", re.I), None),
    (re.compile(r"(?<!\w)(?P<op>trước|sau|từ)\s+(?P<a>(?:ngày|tháng|năm)\s+.+)", re.I), None),
]
_BEFORE_WORDS = frozenset(["before", "until", "trước"])


@dataclass(frozen=True)
class _Range:
    after: date
    before: date  # exclusive


@functools.lru_cache(maxsize=8)
def _date_parser(language: str, now: datetime) -> Any:
    """dateparser's parser for one language, relative to ``now`` (its settings are fixed when
    it is made). Imported here: dateparser builds its language tables on first use (~0.2 s)."""
    from dateparser.date import DateDataParser

    settings = {
        "RELATIVE_BASE": now,
        "PREFER_DATES_FROM": "past",
        "RETURN_TIME_AS_PERIOD": True,
        "PREFER_DAY_OF_MONTH": "first",
        "DATE_ORDER": "DMY",
    }
    return DateDataParser(languages=[language], settings=settings)


_PERIOD_DAYS = {"day": 1, "week": 7}


def _date_range(phrase: str, now: datetime) -> _Range | None:
    """The range of days ``phrase`` names, by dateparser, or None if it is not a date."""
    phrase = phrase.strip(_EDGE_PUNCTUATION + " ")
    if not _DATE_SHAPE.search(phrase) or phrase.casefold() in _RELATIVE_ALONE:
        return None
    words = phrase.casefold().split()
    if words[0] in _DATE_EDGE_WORDS or words[-1] in _DATE_EDGE_WORDS:
        return None
    if re.fullmatch(r"\d+", phrase) and not re.fullmatch(_YEAR, phrase):
        return None
    for language in LANGUAGES:
        # One parser per language and day: relative dates need no finer "now".
        day = datetime.combine(now.date(), datetime.min.time())
        data = _date_parser(language, day).get_date_data(phrase)
        if data.date_obj is None:
            continue
        return _period_range(data.date_obj.date(), data.period or "day", now)
    return None


def _period_range(day: date, period: str, now: datetime) -> _Range:
    if period == "year":
        return _Range(date(day.year, 1, 1), date(day.year + 1, 1, 1))
    if period == "month":
        first = day.replace(day=1)
        return _Range(first, _add_months(first, 1))
    if period == "week" and day == (now.date() - timedelta(days=7)):
        # "last week": the seven days before the current week, Monday to Sunday.
        monday = now.date() - timedelta(days=now.weekday() + 7)
        return _Range(monday, monday + timedelta(days=7))
    return _Range(day, day + timedelta(days=_PERIOD_DAYS.get(period, 1)))


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year = day.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _season_range(season: str, year: int) -> _Range:
    first = date(year, _SEASONS[season], 1)
    return _Range(first, _add_months(first, 3))


def _season_word(text: str) -> str:
    return text.casefold().split()[-1]


def _take_seasons(work: _Work, now: datetime, ranges: list[_Range]) -> None:
    today = now.date()
    for pattern in _SEASON_PATTERNS:
        for match in list(pattern.finditer(work.text)):
            if _GAP in match.group():
                continue
            season = _season_word(match.group("season"))
            groups = match.groupdict()
            if groups.get("year"):
                found = _season_range(season, int(groups["year"]))
            else:
                relative = (groups.get("rel") or groups.get("relvi") or "").casefold()
                found = _season_range(season, today.year)
                if relative in ("last", "ngoái", "trước"):
                    # The latest such season that has ended.
                    if relative == "last" or relative == "trước":
                        while found.before > today:
                            found = _season_range(season, found.after.year - 1)
                    else:  # "năm ngoái": that season of last year
                        found = _season_range(season, today.year - 1)
                elif found.after > today and season in ("winter", "đông"):
                    # "this winter" in January: the winter that began last December.
                    found = _season_range(season, today.year - 1)
            ranges.append(found)
            start = _with_preposition(work, match.start(), _DATE_PREPOSITIONS)
            work.take(start, match.end(), "date", _range_value(found))


def _take_ranges(work: _Work, now: datetime, ranges: list[_Range]) -> None:
    """ "from 2019 to 2021", "between May 2020 and June 2020", "từ năm 2019 đến năm 2021"."""
    for pattern in _RANGE_PATTERNS:
        for match in list(pattern.finditer(work.text)):
            tail = match.group("b")
            first = _date_range(match.group("a"), now)
            if first is None:
                continue
            named = _date_prefix(tail, now)
            if named is None:
                continue
            phrase, second = named
            end = match.start("b") + tail.index(phrase) + len(phrase)
            # "from 2021 to 2019" means the same years as "from 2019 to 2021".
            found = _Range(min(first.after, second.after), max(first.before, second.before))
            ranges.append(found)
            work.take(match.start(), end, "date", _range_value(found))


def _date_prefix(tail: str, now: datetime) -> tuple[str, _Range] | None:
    """The longest start of ``tail`` that is a date, and its range ("2021 beach" -> "2021")."""
    words = tail.split()
    for n in range(min(MAX_DATE_WORDS, len(words)), 0, -1):
        phrase = " ".join(words[:n])
        if _GAP in phrase:
            continue
        found = _date_range(phrase, now)
        if found is not None:
            return phrase, found
    return None


def _take_bounds(work: _Work, now: datetime, ranges: list[_Range]) -> None:
    """ "before 2020", "since July 2023", "trước năm 2020", "sau tháng 7 năm 2023"."""
    for pattern, _ in _BOUND_PATTERNS:
        for match in list(pattern.finditer(work.text)):
            tail = match.group("a")
            prefix = _date_prefix(tail, now)
            if prefix is None:
                continue
            phrase, named = prefix
            if match.group("op").casefold() in _BEFORE_WORDS:
                found = _Range(date(1, 1, 1), named.after)
            else:
                found = _Range(named.after, date(9999, 12, 31))
            end = match.start("a") + tail.index(phrase) + len(phrase)
            ranges.append(found)
            end = _with_dangling_connector(work, match.start(), end)
            work.take(match.start(), end, "date", _range_value(found))


def _take_dates(work: _Work, now: datetime, ranges: list[_Range]) -> None:
    taken_until = -1
    for _, start, end, phrase in list(work.phrases(MAX_DATE_WORDS)):
        if start < taken_until:
            continue
        found = _date_range(phrase, now)
        if found is None:
            continue
        ranges.append(found)
        start = _with_preposition(work, start, _DATE_PREPOSITIONS)
        end = _with_dangling_connector(work, start, end)
        work.take(start, end, "date", _range_value(found))
        taken_until = end


# A chip takes the word before it when it is one of these: "beach in July 2023" leaves "beach".
# "between" and "từ" start a range whose second date may not be typed (yet): the one date given
# is the chip, and the range's words go with it rather than into the search by meaning.
_DATE_PREPOSITIONS = _word_set("in on during of from between vào trong từ giữa")
_RANGE_CONNECTORS = _word_set("to and until till - đến tới và")
_BETWEEN_WORDS = _word_set("between giữa")


def _with_dangling_connector(work: _Work, start: int, end: int) -> int:
    """``end``, or the end of the range word after it when no date follows that word: at the
    end of the query ("dogs from 2019 to"), or the "and" of a "between" ("between 2020 and
    beach" leaves "beach")."""
    after = [w for w in work.words() if w[0] >= end]
    if not after or work.text[end : after[0][0]].strip():
        return end
    word = after[0][2].casefold()
    if word not in _RANGE_CONNECTORS:
        return end
    opened_with = work.text[start:end].split()[0].casefold()
    if len(after) == 1 or (opened_with in _BETWEEN_WORDS and word in {"and", "và"}):
        return after[0][1]
    return end


def _with_preposition(work: _Work, start: int, prepositions: frozenset[str]) -> int:
    """``start``, or the start of the word before it if that is one of ``prepositions``."""
    before = [w for w in work.words() if w[1] <= start]
    if before and before[-1][2].casefold() in prepositions:
        between = work.text[before[-1][1] : start]
        if not between.strip():
            return before[-1][0]
    return start


def _range_value(found: _Range) -> str:
    after = "" if found.after == date(1, 1, 1) else found.after.isoformat()
    before = "" if found.before == date(9999, 12, 31) else found.before.isoformat()
    return f"{after}..{before}"


# --- Places ------------------------------------------------------------------------------

_PLACE_PREPOSITIONS = _word_set("in at near from ở tại gần")


def _take_places(work: _Work, lookup: PlaceLookup, places: list[str]) -> None:
    taken_until = -1
    for _, start, end, phrase in list(work.phrases(MAX_PLACE_WORDS)):
        if start < taken_until:
            continue
        name = lookup(phrase)
        if name is None:
            continue
        start = _with_preposition(work, start, _PLACE_PREPOSITIONS)
        if name not in places:
            places.append(name)
        work.take(start, end, "place", name)
        taken_until = end


# --- The parser ------------------------------------------------------------------------------


def query_parse(
    query: str, *, now: datetime, place_lookup: PlaceLookup | None = None
) -> ParsedQuery:
    """Take the query apart (see the module's docstring). ``now`` is the moment relative dates
    count from; ``place_lookup`` names the known places (none are recognised without it).

    Several date chips narrow each other (their ranges intersect); several places widen (an
    image taken in any of them matches). A range that comes out empty is reported in
    ``problems`` and filters nothing.
    """
    work = _Work(query)
    _take_quotes(work)
    _take_minus_words(work)
    _take_negations(work)
    ranges: list[_Range] = []
    _take_seasons(work, now, ranges)
    _take_ranges(work, now, ranges)
    _take_bounds(work, now, ranges)
    _take_dates(work, now, ranges)
    places: list[str] = []
    if place_lookup is not None:
        _take_places(work, place_lookup, places)
    after = max((r.after for r in ranges), default=None)
    before = min((r.before for r in ranges), default=None)
    problems: tuple[str, ...] = ()
    if after is not None and before is not None and after >= before:
        problems = ("these dates have no day in common",)
        after = before = None
    if after == date(1, 1, 1):
        after = None
    if before == date(9999, 12, 31):
        before = None
    chips = tuple(sorted(work.chips, key=lambda chip: chip.start))
    return ParsedQuery(
        query=query,
        text=_meaning_text(query, chips),
        chips=chips,
        taken_after=after,
        taken_before=before,
        places=tuple(places),
        exclude=tuple(c.value for c in chips if c.kind == "exclude"),
        must=tuple(c.value for c in chips if c.kind == "must"),
        problems=problems,
    )


def _meaning_text(query: str, chips: tuple[QueryChip, ...]) -> str:
    """The query without its chips, except that exact words stay (they mean something too)."""
    parts, at = [], 0
    for chip in chips:
        parts.append(query[at : chip.start])
        parts.append(f" {chip.value} " if chip.kind == "must" else " ")
        at = chip.end
    parts.append(query[at:])
    return _squeeze("".join(parts))


def places_by_key(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Known place names by their ``fold`` key, each key's spellings in the order given; a
    name of fewer than three letters is left out (country codes, stray words)."""
    by_key: dict[str, list[str]] = {}
    for name in names:
        key = fold(name)
        if len(key) >= 3:
            by_key.setdefault(key, []).append(name)
    return {key: tuple(found) for key, found in by_key.items()}


def places_lookup_from(names: Iterable[str]) -> PlaceLookup:
    """A place lookup over known place names, compared by ``fold`` ("Hà Nội" finds
    "Hanoi"), the first spelling given for a key winning (see ``places_by_key``)."""
    known = {key: found[0] for key, found in places_by_key(names).items()}

    def lookup(phrase: str) -> str | None:
        return known.get(fold(phrase))

    return lookup


def day_start(day: date | None) -> datetime | None:
    """The first instant of ``day`` in UTC (taken dates are matched by UTC days)."""
    return None if day is None else datetime.combine(day, time.min, tzinfo=UTC)
