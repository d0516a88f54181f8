"""Dead letters keep what a user needs to find the input, and never carry credentials."""

from __future__ import annotations

import json

import pytest

from transforms.core.errors import SlideError, dead_letter, redact


def test_signed_urls_tokens_and_passwords_are_redacted():
    signed = (
        "https://storage.googleapis.com/b/s.svs?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=abcdef0123&X-Goog-Expires=900"
    )
    out = redact(signed)
    assert "abcdef0123" not in out and "sa%40p.iam" not in out
    assert "X-Goog-Signature=REDACTED" in out and "X-Goog-Expires=900" in out
    assert redact("Authorization: Bearer ya29.a0AfH6SM") == "Authorization: Bearer REDACTED"
    assert redact("https://alice:s3cret@host/x.svs") == "https://alice:REDACTED@host/x.svs"
    assert redact("gs://bucket/slides/a.svs") == "gs://bucket/slides/a.svs"


def test_dead_letter_redacts_message_and_input_and_drops_pixels():
    uri = "https://h/s.svs?sig=SECRET1&token=SECRET2"
    row = dead_letter(
        "PlanPatches",
        "s1",
        SlideError(f"cannot open {uri}"),
        {"slide_id": "s1", "uri": uri, "pixels": b"x" * 10},
    )
    text = json.dumps(row)
    assert "SECRET1" not in text and "SECRET2" not in text
    assert row["stage"] == "PlanPatches" and row["error_type"] == "SlideError"
    assert "pixels" not in json.loads(row["input"])


@pytest.mark.parametrize("unit", ["a.", "a-", "x://u:p", "bearer "])
def test_redaction_is_linear_on_a_megabyte_of_adversarial_text(unit):
    """The URL-password pattern was quadratic (8.8 s on 60 KB; a 300 KB manifest cell held a run
    for 186 s). Ten times the text must cost about ten times the time, not a hundred: measured
    as a ratio on this machine, in one run."""
    import time

    def cost(n: int) -> float:
        text = unit * (n // len(unit))  # "a." repeated took 4.9 s on 24 KB before
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            redact(text)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(100_000), cost(1_000_000)
    assert large / small < 30, (small, large)


def test_long_keys_and_messages_are_cut_with_their_length_and_a_hash():
    from transforms.core.errors import MAX_KEY_CHARS, MAX_MESSAGE_CHARS, dead_letter

    letter = dead_letter("ReadManifest", "s" * 5_000_000, "m" * 5_000_000, {"x": "y" * 10**6})
    assert len(letter["key"]) <= MAX_KEY_CHARS and "5,000,000 characters" in letter["key"]
    assert len(letter["message"]) <= MAX_MESSAGE_CHARS and "sha256" in letter["message"]
    other = dead_letter("ReadManifest", "s" * 4_999_999 + "t", "m")
    assert other["key"] != letter["key"]  # the hash tells two long ids apart
    assert len(letter["input"]) < 5000


def test_control_characters_are_shown_not_obeyed():
    from transforms.core.errors import printable

    hostile = "slide\x1b]0;owned\x07\x1b[31mred\rover\x00end\ttab\nline"
    shown = printable(hostile)
    assert shown == "slide\\x1b]0;owned\\x07\\x1b[31mred\\x0dover\\x00end\ttab\nline"
    assert not any(ord(c) < 32 and c not in "\t\n" for c in shown)
