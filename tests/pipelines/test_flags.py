"""The command line's one-line errors, and the one private Beam hook the flag check relies on."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.flags import COMMON, SLIDES, STREAM, TEXT, _beam_parser, flag_names
from pipelines.launch import pipeline_options
from transforms.core.errors import ConfigError

SLIDE_ARGS = ["--slides", "s.csv", "--model", "m=m.pt2"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--patch_px", "abc", "argument --patch_px: invalid int value: 'abc'"),
        ("--min_tissue", "half", "argument --min_tissue: invalid float value: 'half'"),
        ("--num_workers", "many", "argument --num_workers: invalid int value: 'many'"),
        ("--skip_existing", "maybe", "argument --skip_existing: expected true or false"),
    ],
)
def test_a_bad_flag_value_is_one_line_naming_the_flag(flag, value, message):
    with pytest.raises(ConfigError) as caught:
        pipeline_options([*SLIDE_ARGS, flag, value], SLIDES)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_beam_s_flag_hook_still_lists_every_beam_flag():
    """``_beam_parser`` calls each Beam options class's ``_add_argparse_args`` (no public API
    lists option strings with their aliases). If Beam changes that hook, this fails: the names
    it gives must be exactly Beam's options as the public ``get_all_options`` lists them."""
    parser = _beam_parser()
    beam_names = {a.dest for a in parser._actions}  # noqa: SLF001 - checks the private route
    ours = set(flag_names(COMMON + SLIDES + TEXT + STREAM)) | {"gpu"}
    public = set(PipelineOptions([]).get_all_options()) - ours
    assert public - beam_names == set()
    assert {"--runner", "--experiment", "--experiments", "--sdk_container_image"} <= set(
        parser.option_strings
    )
