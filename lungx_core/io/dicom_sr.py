"""DICOM Structured Report output with highdicom: a TID 1500 measurement report of nodule findings on a
radiograph, one planar region (a circle of the estimated diameter, in the source image's pixel coordinates) per
finding, each referencing the source instance, in the source's study (a new series); a film without findings gets
one group whose finding is "None".

Example:
    >>> write_nodule_sr(Path("out/film_nodules_sr.dcm"), image, findings, "cxr_nodules")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungx_core.image import MedicalImage
from lungx_core.io.derived import fill_type2
from lungx_core.io.dicom_seg import source_files
from lungx_core.io.writers import atomic_path

SERIES_NUMBER_OFFSET = 3000  # SR series numbers: the source's + 3000 (derived + 1000, SEG + 2000)


def write_nodule_sr(path: Path, image: MedicalImage, findings: list[dict], algorithm: str) -> Path:
    """Write ``findings`` (nodule_detection candidates: ``rank``, ``col``, ``row``, ``diameter_px``,
    ``diameter_mm``, ``probability``) on the DICOM radiograph ``image`` as a Comprehensive SR, atomically."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from lungx_core import __version__

    source = pydicom.dcmread(source_files(image)[0], stop_before_pixels=True)
    fill_type2(source)
    region_source = hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)
    algorithm_id = hd.sr.AlgorithmIdentification(name=f"LungX {algorithm}", version=__version__)
    probability = hd.sr.CodedConcept("NODULE_PROB", "99LUNGX", "Nodule probability")
    groups = []
    for c in findings:
        # SCOORD pixel coordinates: (column, row) with (0, 0) the top-left corner of the first pixel
        centre = np.array([c["col"] + 0.5, c["row"] + 0.5])
        circle = np.array([centre, centre + [max(c["diameter_px"] / 2, 1.0), 0.0]], dtype=np.float32)
        measurements = [hd.sr.Measurement(name=probability, value=round(float(c["probability"]), 4),
                                          unit=codes.UCUM.NoUnits, algorithm_id=algorithm_id)]
        if c.get("diameter_mm"):
            measurements.append(hd.sr.Measurement(name=codes.SCT.Diameter, value=round(float(c["diameter_mm"]), 1),
                                                  unit=codes.UCUM.Millimeter, algorithm_id=algorithm_id))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"nodule {c['rank']}"),
            referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.CIRCLE, circle, region_source),
            finding_type=codes.SCT.Nodule, algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], measurements=measurements,
        ))
    if not groups:  # TID 1500 needs a group: a film without findings says so
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="no nodule candidates"),
            finding_type=hd.sr.CodedConcept("260413007", "SCT", "None"), algorithm_id=algorithm_id,
        ))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="LungX", manufacturer_name="LungX", model_name=algorithm),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("168731009", "SCT", "Chest X-ray"),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=generate_uid(),
        series_number=int(source.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="LungX",
        series_description=f"{algorithm} nodule candidates (lungx)"[:64],
    )
    with atomic_path(path) as tmp:
        sr.save_as(tmp)
    return path
