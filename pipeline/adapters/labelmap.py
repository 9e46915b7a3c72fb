"""Mapping dataset label names and codes onto the project's seven expressions.

Every adapter turns its raw label (a folder name, a CSV value, an integer code) into one of three
outcomes: a canonical expression name, DROP (a real label the project has no class for, such as
contempt or AffectNet's "none"), or unknown (a value the dataset should not contain). Dropped labels
are counted in the import summary; unknown ones are an error unless the user asks to drop them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from pipeline.expressions import EXPRESSION_INDEX, EXPRESSIONS

# Sentinel for "a known label with no class here": counted, never an error.
DROP: Final = "__drop__"

# Spellings seen in common datasets and folder layouts, all lower-case.
_SYNONYMS: dict[str, str] = {
    "neutral": "neutral",
    "neutrality": "neutral",
    "ne": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "smile": "happy",
    "ha": "happy",
    "sad": "sad",
    "sadness": "sad",
    "sa": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "su": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "af": "fear",
    "anger": "anger",
    "angry": "anger",
    "an": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "di": "disgust",
    # Real labels without a class in the 7-expression set: dropped and counted.
    "contempt": DROP,
    "none": DROP,
    "uncertain": DROP,
    "no-face": DROP,
    "no_face": DROP,
    "noface": DROP,
    "non-face": DROP,
}
assert set(_SYNONYMS.values()) == {*EXPRESSIONS, DROP}
_EXPORT_FOLDER = re.compile(r"(\d+)_([a-z]+)")

# Integer label schemes of the named datasets: code -> label name as the dataset documents it.
FER2013_CODES: dict[int, str] = {
    0: "angry",
    1: "disgust",
    2: "fear",
    3: "happy",
    4: "sad",
    5: "surprise",
    6: "neutral",
}
RAFDB_CODES: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happiness",
    5: "sadness",
    6: "anger",
    7: "neutral",
}
AFFECTNET_CODES: dict[int, str] = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
    8: "none",
    9: "uncertain",
    10: "no-face",
}
CKPLUS_CODES: dict[int, str] = {
    0: "neutral",
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happy",
    6: "sadness",
    7: "surprise",
}
KDEF_CODES: dict[str, str] = {
    "AF": "afraid",
    "AN": "angry",
    "DI": "disgusted",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprised",
}


def map_name(raw: str) -> str | None:
    """Canonical expression for a label name, DROP for a known label without a class, None if unknown."""
    key = raw.strip().lower().replace(" ", "-")
    # A fersynth export's class folder, `<label>_<expression>` (e.g. 1_happy), imports back as its expression.
    m = _EXPORT_FOLDER.fullmatch(key)
    if m and EXPRESSION_INDEX.get(m.group(2)) == int(m.group(1)):
        return m.group(2)
    return _SYNONYMS.get(key)


def map_code(raw: str | int, codes: Mapping[int, str]) -> tuple[str, str | None]:
    """(label name for messages, mapped value) for an integer code; mapped is None when unknown.

    Codes arrive as text from label files ("5", "3.0000000e+00" in CK+), so floats that are whole
    numbers are accepted; anything else is unknown rather than a crash.
    """
    text = str(raw).strip()
    try:
        value = float(text)
    except ValueError:
        return text, None
    if not value.is_integer() or int(value) not in codes:
        return text, None
    name = codes[int(value)]
    return name, map_name(name)
