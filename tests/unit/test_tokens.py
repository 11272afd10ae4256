"""What counts as a well-formed token before any database lookup."""

from __future__ import annotations

from pao import tokens


def test_new_tokens_are_well_formed_and_distinct() -> None:
    made = {tokens.new_token() for _ in range(200)}
    assert len(made) == 200
    assert all(tokens.is_well_formed(t) and len(t) == tokens.TOKEN_LEN for t in made)


def test_anything_but_base62_after_the_prefix_is_refused() -> None:
    token = tokens.new_token()
    body = token[len(tokens.PREFIX) :]
    for bad in ("_", "-", " ", "²", "٣", "é", "\x00", "+"):
        for at in (0, 17, len(body) - 1):  # the random part and the checksum
            spoiled = tokens.PREFIX + body[:at] + bad + body[at + 1 :]
            assert not tokens.is_well_formed(spoiled), repr(spoiled)


def test_a_wrong_checksum_length_or_prefix_is_refused() -> None:
    token = tokens.new_token()
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert not tokens.is_well_formed(flipped)
    assert not tokens.is_well_formed(token[:-1])
    assert not tokens.is_well_formed(token + "A")
    assert not tokens.is_well_formed("pax_" + token[4:])
    assert not tokens.is_well_formed("")
