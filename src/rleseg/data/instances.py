"""Instance label maps (one id per object, 0 background: what napari, StarDist and Cellpose write) as the
(semantic, instances) pair the datasets give a panoptic tokenizer.

Without a class table every object is of class 1 (one foreground class). A class table maps each id to its
class in 1 .. C-1: a JSON object ``{"1": 2, "2": 1, ...}`` (StarDist's multi-class ``cls_dict`` saved with
``json.dump``). The folder layout reads one table per mask file, ``<mask stem>.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ClassTable = dict[int, int]


def read_class_table(path: str | Path, num_classes: int) -> ClassTable:
    """The instance-id -> class table of a JSON file; ValueError naming the file and the bad entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the class table ({error}); expected a JSON object "
                         '{"<instance id>": <class>, ...}') from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: holds a {type(data).__name__}; expected a JSON object {{"<instance id>": <class>}}')
    table = {}
    for key, value in data.items():
        if not (key.isdigit() and int(key) > 0 and type(value) is int and 0 < value < num_classes):
            raise ValueError(f"{path}: entry {key!r}: {value!r}; expected an instance id >= 1 and a class in "
                             f"1..{num_classes - 1}")
        table[int(key)] = value
    return table


def instance_semantic(instances: np.ndarray, table: ClassTable | None = None, source: str | Path = "<array>"
                      ) -> np.ndarray:
    """(..., H, W) instance ids (0 = background) -> (..., H, W) int64 classes: 1 for every object without a
    ``table``, else each id's class; ValueError naming ``source`` and an id the table lacks."""
    if table is None:
        return (instances > 0).astype(np.int64)
    ids, inverse = np.unique(instances, return_inverse=True)
    missing = [int(i) for i in ids if i and int(i) not in table]
    if missing:
        raise ValueError(f"{source}: instance id {missing[0]} is not in its class table ({len(missing)} id(s) "
                         "missing); expected a class for every object")
    classes = np.array([table.get(int(i), 0) for i in ids], dtype=np.int64)
    return classes[inverse].reshape(instances.shape)
