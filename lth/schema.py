"""What a record is, as one JSON Schema checked whenever a record is read (fastjsonschema, installed with nbformat:
it compiles the schema once and imports in milliseconds): a file that fails it is listed as damaged, with what
failed, and every other record is still stated."""
from __future__ import annotations

import functools

FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
SECONDS = {"type": "number", "minimum": 0}

EPOCH = {
    "type": "object",
    "required": ["round", "val_acc", "seconds"],
    "properties": {
        "phase": {"type": "string"},
        "round": {"type": "integer", "minimum": 0},
        "epoch": {"type": "integer", "minimum": 1},
        "cum_epoch": {"type": "integer", "minimum": 1},
        "train_loss": {"type": "number"},
        "val_acc": FRACTION,
        "sparsity": FRACTION,
        "layer_sparsity": {"type": "object", "additionalProperties": FRACTION},
        "seconds": SECONDS,
        "stopped_seconds": {"type": ["number", "null"], "minimum": 0},  # null: a stop of unknown length
        "device": {"type": "string"},
    },
}

RECORD = {
    "type": "object",
    "required": ["experiment", "name", "params", "hparams", "history", "final_val_acc", "final_sparsity", "data"],
    "properties": {
        "experiment": {"type": "string"},
        "name": {"type": "string"},
        "params": {"type": "object"},
        "hparams": {"type": "object"},
        "history": {"type": "array", "minItems": 1, "items": EPOCH},
        "final_val_acc": FRACTION,
        "final_sparsity": FRACTION,
        "seconds": SECONDS,
        "device": {"type": "string"},
        "versions": {"type": "object"},
        "data": {"type": "object"},
        "network": {"type": ["object", "null"]},
    },
}


@functools.cache
def validator():
    import fastjsonschema
    return fastjsonschema.compile(RECORD)


def schema_error(record) -> str | None:
    """What in `record` breaks the schema first: "history[3] must contain ['round'] properties", or None."""
    import fastjsonschema
    try:
        validator()(record)
    except fastjsonschema.JsonSchemaValueException as e:
        return e.message.removeprefix("data.").replace("data must", "the record must")
    return None
