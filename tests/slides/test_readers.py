"""open_slide asks the registered readers: by URI scheme, then by the file's first bytes, never
by its name; a file no reader takes is refused naming every reader."""

from __future__ import annotations

import shutil

import pytest

from transforms.core.errors import UnsupportedFormatError
from transforms.slides.dicom import DicomSlideFile
from transforms.slides.reader import open_slide, registered
from transforms.slides.tiff import TiffSlideFile


def test_every_reader_is_registered_once_with_a_way_to_be_chosen():
    readers = registered()
    assert [r.name for r in readers] == ["DICOMweb", "DICOM", "TIFF"]
    assert all(r.schemes or r.takes for r in readers)
    assert readers[0].schemes == ("dicomweb+http://", "dicomweb+https://")


def test_the_content_chooses_the_reader_not_the_name(shared_data, tmp_path):
    dicom_named_svs = tmp_path / "really_dicom.svs"
    shutil.copy(shared_data / "dicom_wsi2dcm_jpeg" / "wsi2dcm_jpeg.dcm", dicom_named_svs)
    svs = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    for uri, reader in (
        (dicom_named_svs, DicomSlideFile),
        (svs, TiffSlideFile),
        (shared_data / "dicom_openslide_boxes", DicomSlideFile),  # a folder of instances
    ):
        slide = open_slide(str(uri))
        try:
            assert isinstance(slide, reader) and slide.level_dimensions[0][0] > 0
        finally:
            slide.close()


def test_a_file_no_reader_takes_names_every_reader(tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide at all")
    with pytest.raises(UnsupportedFormatError, match=r"no slide reader takes it \(DICOMweb, DICOM"):
        open_slide(str(text))
    with pytest.raises(FileNotFoundError):
        open_slide(str(tmp_path / "missing.svs"))


@pytest.mark.slow  # writes and parses a 5 MB tag
def test_a_malformed_dicom_tag_never_hides_the_real_error(shared_data, tmp_path):
    """A 5 MB ImageType of numbers raised ``TypeError: sequence item 0: expected str`` from the
    code that describes the file: describing an input must never raise, and stays short."""
    import pydicom

    ds = pydicom.dcmread(shared_data / "dicom_wsi2dcm_raw" / "wsi2dcm_raw.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage: not a slide
    ds.add_new(0x00080008, "US", [7] * 2_500_000)  # ImageType: 5 MB of numbers
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(UnsupportedFormatError, match="holds no whole-slide image") as caught:
        open_slide(str(bad))
    assert len(str(caught.value)) < 3000
