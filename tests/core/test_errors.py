"""Dead letters keep what a user needs to find the input, and never carry credentials."""

from __future__ import annotations

import json

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
