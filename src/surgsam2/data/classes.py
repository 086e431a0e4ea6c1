"""Instrument class tables of the EndoVis challenges (ISINet / SurgicalSAM convention), in one place.

Class ids 1-7 are the instrument types; 0 is background. EndoVis 2018 (ISINet relabelling) and
EndoVis 2017 share ids 1-3; 2017 numbers its instruments as ISINet does (4 Vessel Sealer,
5 Grasping Retractor, 6 Monopolar Curved Scissors, 7 Ultrasound Probe). The synthetic generator
draws the 2018 classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

ENDOVIS18_CLASSES: Mapping[int, str] = MappingProxyType(
    {
        1: "Bipolar Forceps",
        2: "Prograsp Forceps",
        3: "Large Needle Driver",
        4: "Monopolar Curved Scissors",
        5: "Ultrasound Probe",
        6: "Suction Instrument",
        7: "Clip Applier",
    }
)

ENDOVIS17_CLASSES: Mapping[int, str] = MappingProxyType(
    {
        1: "Bipolar Forceps",
        2: "Prograsp Forceps",
        3: "Large Needle Driver",
        4: "Vessel Sealer",
        5: "Grasping Retractor",
        6: "Monopolar Curved Scissors",
        7: "Ultrasound Probe",
    }
)

CLASS_TABLES: Mapping[str, Mapping[int, str]] = MappingProxyType(
    {"endovis18": ENDOVIS18_CLASSES, "endovis17": ENDOVIS17_CLASSES, "synthetic": ENDOVIS18_CLASSES}
)

NUM_INSTRUMENT_CLASSES = 7


def class_table(dataset: str) -> dict[int, str]:
    """The id -> name table of a dataset family ("endovis18", "endovis17", "synthetic")."""
    key = dataset.lower().replace("_", "").replace("-", "").replace(" ", "")
    aliases = {"endovis2018": "endovis18", "endovis2017": "endovis17", "synth": "synthetic"}
    key = aliases.get(key, key)
    if key not in CLASS_TABLES:
        raise ValueError(f"unknown class table {dataset!r}; known: {', '.join(sorted(CLASS_TABLES))}")
    return dict(CLASS_TABLES[key])


def class_name(class_id: int, dataset: str = "endovis18") -> str:
    """The name of one instrument class id in a dataset family's table."""
    table = class_table(dataset)
    if class_id not in table:
        raise ValueError(f"unknown instrument class id {class_id} for {dataset} (known: 1-{len(table)})")
    return table[class_id]
