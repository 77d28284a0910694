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
import tempfile
import zipfile

import numpy as np

from .layers import Sequential
from .module import _REGISTRY, FORMAT_VERSION

#: deepest nesting of Sequentials `build` accepts (a crafted file nests thousands, which would
#: otherwise end in a RecursionError)
MAX_NESTING = 100


def build(config, where="model configuration", _depth=0):
    """A module from its config() dict; ValueError naming what is wrong with a malformed one."""
    if _depth > MAX_NESTING:
        raise ValueError(f"{where}: Sequentials are nested more than {MAX_NESTING} deep")
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a layer must be described by a dict with 'type' and 'args', got "  # noqa: TRY004 (bad file content)
                         f"{type(config).__name__}")
    kind = config.get("type")
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ValueError(f"{where}: unknown layer type {kind!r} (known: {', '.join(sorted(_REGISTRY))})")
    args = config.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where}: 'args' of {kind} must be a dict, got {type(args).__name__}")  # noqa: TRY004 (bad file content)
    if kind == "Sequential":
        modules = args.get("modules")
        if set(args) != {"modules"} or not isinstance(modules, list):
            raise ValueError(f"{where}: Sequential needs args {{'modules': [layer configurations]}}, got keys {sorted(args)}")
        return Sequential(*[build(c, f"{where}, Sequential layer {i}", _depth + 1) for i, c in enumerate(modules)])
    try:
        return _REGISTRY[kind](**args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot build {kind} from args {args}: {exc}") from None


def check_writable(path):
    """ValueError unless `save` can write `path`: its directory exists and takes a new file (a
    real write, since os.access says yes to root on a read-only mount), and it is not a directory.
    Call it before long work whose result goes there."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"check_writable: path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.fspath(path).strip():
        raise ValueError("the file name is empty; give a file name such as model.npz")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a file name such as {os.path.join(path, 'model.npz')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{parent} is not a directory" if os.path.exists(parent) else f"directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".dlcpu-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write to directory {parent} ({exc.strerror or exc})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{path} exists and is not writable")


def save(model, path):
    """Write the model (configuration + parameters + buffers) to an .npz file, atomically: a
    crash or an interruption (KeyboardInterrupt included) mid-write leaves the previous file
    intact and no temporary file behind."""
    arrays = {f"param:{k}": v for k, v in model.state().items()}
    config = json.dumps(model.config())
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, __format_version__=np.int64(FORMAT_VERSION), __config__=np.array(config), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path):
    """Rebuild a model saved by `save`.  ValueError, naming what is wrong, for a file that is not
    a dlcpu model (unreadable, foreign, another format version, a malformed configuration,
    missing, extra or mis-shaped parameters)."""
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # numpy reads any file that is not .npy/.npz as a pickle and says so; name the real problem
        why = "neither an .npz archive nor an .npy array" if "pickle" in str(exc) else str(exc)
        raise ValueError(f"{path}: not a readable dlcpu model file ({why})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a dlcpu model file (a single .npy array, not an .npz archive)")  # noqa: TRY004
    try:
        with f:
            files = dict(f.items())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise ValueError(f"{path}: not a readable dlcpu model file ({exc or type(exc).__name__})") from None
    if "__format_version__" not in files or "__config__" not in files:
        raise ValueError(f"{path}: not a dlcpu model file (no format version or configuration)")
    stamp = files["__format_version__"]
    if stamp.shape != () or stamp.dtype.kind not in "iu":
        raise ValueError(f"{path}: not a dlcpu model file (format version is {stamp!r}, not an integer)")
    version = int(stamp)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: model file format version {version}, this dlcpu reads version {FORMAT_VERSION}")
    try:
        config = json.loads(str(files["__config__"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt model configuration ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: model configuration is nested too deeply to be a dlcpu model") from None
    try:
        model = build(config, f"{path}: model configuration")
    except RecursionError:
        raise ValueError(f"{path}: model configuration is nested too deeply to be a dlcpu model") from None
    except MemoryError as exc:
        raise ValueError(f"{path}: the model's parameters do not fit in memory ({exc or 'MemoryError'})") from None
    state = {k[len("param:"):]: v for k, v in files.items() if k.startswith("param:")}
    try:
        model.load_state(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    expected = set(model.state())
    extra = sorted(set(state) - expected)
    unknown = sorted(k for k in files if not k.startswith("param:") and k not in ("__format_version__", "__config__"))
    if extra or unknown:
        raise ValueError(f"{path}: model file has entries the model does not use: {', '.join(extra + unknown)}")
    return model
