"""Names the pre-flight sends over the wire (dataset, features) and the fixed HU bins: spelled only here."""

from __future__ import annotations

PREFLIGHT_JOB = "preflight"
DATASET = "ct"  # one dataset per site: every usable slice of its manifest (train and val)

# Pixel features (one value per pixel).
BODY_HU = "body_hu"  # pixels inside the body (above BODY_HU_RANGE[0]) and below bone (BODY_HU_RANGE[1])
LESION_HU = "lesion_hu"  # pixels inside the label mask
# Slice features (one value per usable slice).
LESION_PRESENT = "lesion_present"  # 1 if the slice's mask has a lesion pixel, else 0: its mean is the prevalence
PIXEL_SPACING = "pixel_spacing_mm"  # mean of the row and column spacing
SLICE_THICKNESS = "slice_thickness_mm"
LESION_AREA = "lesion_area_mm2"  # labelled area of a slice with a lesion (lesion slices only)
# One value per series / per patient: their counts are the numbers of series and patients.
SLICES_PER_SERIES = "slices_per_series"
SLICES_PER_PATIENT = "slices_per_patient"
# Categorical header fields, one-hot per series: feature "manufacturer=<value>" is 1 for a series of that
# value and 0 for the site's other series, so its sum is the number of series and its mean their fraction.
# FLARE's statistics are numeric only (it drops STRING features), so this is how a category is counted, and
# the counts pass the same privacy cleansers (min_count) as every other statistic.
CATEGORICAL = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName"}  # prefix: DICOM keyword
NOT_RECORDED = "(not recorded)"  # the value of a header field a series does not have

# Body pixels: above -500 HU (no air, no lung) and below 300 HU (no bone, metal or dense contrast), i.e. the
# soft tissue and fat the model's window [-160, 240] HU sees. Bone would dominate the spread and says
# nothing about calibration.
BODY_HU_RANGE = (-500.0, 300.0)
# Fixed global histogram bins for both HU features (every site bins alike, no range estimate needed): 10 HU.
HU_HIST_RANGE = (-200.0, 300.0)
HU_HIST_BINS = 50
# Stored pixel values are summarised at 1 HU (CT stores integer HU) between these limits; outside: clipped.
HU_CLIP = (-1024, 3071)


def categorical_feature(field: str, value: str) -> str:
    return f"{field}={value}"


def split_categorical(feature: str) -> tuple[str, str] | None:
    """("manufacturer", "Acme Medical") for "manufacturer=Acme Medical"; None for a numeric feature."""
    field, sep, value = feature.partition("=")
    return (field, value) if sep and field in CATEGORICAL else None
