"""Reference IDs made from strip and file names stay readable in any Latin-script language."""

from __future__ import annotations

import pytest

from bridge.errors import InputError
from bridge.jobs import check_reference_id, normalize_reference_id, safe_reference_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ärger", "Aerger"),
        ("Öl", "Oel"),
        ("über", "ueber"),
        ("Straße", "Strasse"),
        ("café", "cafe"),
        ("cafe\u0301", "cafe"),  # the accent as a separate combining mark
        ("Øre", "Ore"),
        ("æ", "ae"),
        ("œ", "oe"),
        ("ł", "l"),
        ("Łódź Ñandú", "Lodz-Nandu"),
        ("ﬁlm", "film"),  # a ligature
        ("Szene 会议 2", "Szene-2"),
        ("A会B", "A-B"),  # a dropped character still parts the words around it
    ],
)
def test_names_are_spelled_in_latin_letters(name: str, expected: str) -> None:
    assert safe_reference_id(name) == expected
    assert check_reference_id(safe_reference_id(name)) == expected


@pytest.mark.parametrize("name", ["会议", "😀", "---", "", "..."])
def test_a_name_with_nothing_latin_becomes_clip(name: str) -> None:
    assert safe_reference_id(name) == "clip"


def test_the_stem_is_cut_to_its_length_after_spelling() -> None:
    stem = safe_reference_id("Ärger-" * 20, max_len=36)
    assert stem.startswith("Aerger-Aerger") and len(stem) <= 36
    assert check_reference_id(stem) == stem


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Take-1", "Take-1"),
        ("Ärger Take 1", "Aerger-Take-1"),
        ("../../etc/passwd", "etc-passwd"),
        ("a..b", "a.b"),
    ],
)
def test_the_bridge_normalizes_a_reference_id_and_keeps_a_valid_one(
    given: str, expected: str
) -> None:
    assert normalize_reference_id(given) == expected


@pytest.mark.parametrize(
    ("given", "sentence"),
    [
        ("", "has no letter or digit"),
        ("😀", "has no letter or digit"),
        ("---", "has no letter or digit"),
        ("take\n", "is not allowed"),
        ("a\u200bb", "is not allowed"),
        ("Ä" * 129, "is 129 characters long"),
    ],
)
def test_a_reference_id_the_bridge_cannot_spell_is_refused_with_a_sentence(
    given: str, sentence: str
) -> None:
    with pytest.raises(InputError, match=rf"{sentence}.*\.$"):
        normalize_reference_id(given)
