"""Saving and loading dlcpu.nn models.

Design: a model file is an .npz with three kinds of entries: `__format_version__`,
`__config__` (the model's configuration as JSON, rebuilt through the layer registry, no pickles)
and `param:<name>` arrays in the logical layout (NCHW/KCRS, unpadded), so a file does not depend
on the blocking.  Writes go to a temporary file that replaces the target, so a crash mid-write
leaves the previous file intact; `load` refuses other versions, corrupt files and mismatched
shapes with a ValueError.
"""
import json
import os
import zipfile

import numpy as np

from .layers import Sequential
from .module import _REGISTRY, FORMAT_VERSION


def build(config):
    """A module from its config() dict."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in _REGISTRY:
        raise ValueError(f"unknown layer type {kind!r} in model configuration")
    args = dict(config.get("args", {}))
    if kind == "Sequential":
        return Sequential(*[build(c) for c in args["modules"]])
    return _REGISTRY[kind](**args)


def save(model, path):
    """Write the model (configuration + parameters + buffers) to an .npz file, atomically: a
    crash mid-write leaves the previous file intact."""
    arrays = {f"param:{k}": v for k, v in model.state().items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, __format_version__=np.int64(FORMAT_VERSION),
                 __config__=np.array(json.dumps(model.config())), **arrays)
    os.replace(tmp, path)


def load(path):
    """Rebuild a model saved by `save`; ValueError for another format version or a bad file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            files = dict(f.items())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable dlcpu model file ({exc})") from None
    if "__format_version__" not in files or "__config__" not in files:
        raise ValueError(f"{path}: not a dlcpu model file (no format version or configuration)")
    version = int(files["__format_version__"])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: model file format version {version}, this dlcpu reads version {FORMAT_VERSION}")
    try:
        config = json.loads(str(files["__config__"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt model configuration ({exc})") from None
    model = build(config)
    model.load_state({k[len("param:"):]: v for k, v in files.items() if k.startswith("param:")})
    return model
