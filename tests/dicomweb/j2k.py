"""A JPEG 2000 copy of a DICOM slide (no such file ships in ../shared): the same pixels, each
frame re-encoded losslessly, under new instance and series UIDs."""

from __future__ import annotations

from pathlib import Path

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def jpeg2000_copy(source: Path, target: Path) -> Path:
    """``source`` (an uncompressed WSI instance) rewritten as JPEG 2000 lossless at ``target``."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    ds = pydicom.dcmread(source)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns, -1)
    encoded = [imagecodecs.jpeg2k_encode(frame, level=0, codecformat="j2k") for frame in frames]
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(JPEG_2000_LOSSLESS)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.LossyImageCompression = "00"
    ds.save_as(target, enforce_file_format=True)
    return target
