"""Step outputs are made storable in jsonb before they are written with the run."""

from __future__ import annotations

import math

from worker.pipeline import storable


def test_a_clean_string_is_kept_as_it_is() -> None:
    for text in ("plain ascii", "", "Grüße, 東京 🎉"):
        assert storable(text) == text


def test_nul_and_lone_surrogates_become_replacement_characters() -> None:
    assert storable("a\x00b") == "a\ufffdb"
    assert storable("ascii\x00") == "ascii\ufffd"
    assert storable("x\ud800y\udfffz") == "x\ufffdy\ufffdz"
    assert storable("é\x00") == "é\ufffd"


def test_nested_values_keys_and_numbers() -> None:
    value = {"k\x00": [1, 2.5, math.nan, math.inf, True, None, ("t", "\ud83d")], 3: "v"}
    assert storable(value) == {
        "k\ufffd": [1, 2.5, None, None, True, None, ["t", "\ufffd"]],
        "3": "v",
    }


def test_other_objects_become_their_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing\x00"

    assert storable(Thing()) == "thing\ufffd"
