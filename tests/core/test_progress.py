"""Progress lines read the counters a person cares about."""

from __future__ import annotations

from transforms.core.progress import slide_progress_line, text_progress_line


def test_slide_line_counts_inferences_over_all_models_and_gives_an_eta():
    tally = {
        "slides_planned": 3,
        "slides_failed": 1,
        "slides_summarized": 1,
        "patches_planned": 100,
        "patches_inferred": 50,
    }
    line = slide_progress_line(tally, 10.0, n_models=2)
    assert line == "slides 2/4 done, 50/200 patch inferences, 5.0 patches/s, ETA 30s"


def test_text_line_counts_documents_and_windows():
    tally = {"documents_tokenized": 20, "documents_done": 8, "windows": 30, "windows_inferred": 12}
    assert text_progress_line(tally, 4.0, 2) == (
        "documents 8/20 done over 2 model(s), windows 12/30 inferred, 2.0 document results/s"
    )
