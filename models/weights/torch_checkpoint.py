"""Reads `torch.save` files without torch and without running any pickled code.

Two file formats, both written by `torch.save`:

- zip (torch >= 1.6, the default): a zip archive `<prefix>/data.pkl` (the object pickle) plus
  `<prefix>/data/<key>` (the raw bytes of storage `key`) and `<prefix>/byteorder` ('little'
  or 'big'; absent = little).
- legacy (pre-1.6, or `_use_new_zipfile_serialization=False`): consecutive pickles of the magic
  number 0x1950a86a20f9469cfc6c, the protocol version 1001 and a sys-info dict
  ({'little_endian': bool, ...}), then the object pickle, then a pickle of the list of storage
  keys; then, for each key in that order, an 8-byte element count (int64, the file's byte
  order) followed by count * element-size raw bytes.

In the object pickle every storage is a persistent id ('storage', storage_type, key, location,
numel[, view_metadata]) (view_metadata, legacy only: None or (view_key, offset, numel), a
slice of the root storage in elements); tensors are `torch._utils._rebuild_tensor(_v2)(storage,
storage_offset, size, stride, ...)`, parameters `_rebuild_parameter(tensor, ...)`.

Safety: the pickles are read by an `Unpickler` whose `find_class` allows exactly the globals
in `ALLOWED_GLOBALS` (collections.OrderedDict, the tensor/parameter rebuild functions and the
torch.*Storage classes), each mapped to a stand-in defined here; any other global (os.system,
a pickled nn.Module class, ...) raises `CheckpointError` (a ValueError, like every refusal)
naming the file and the global, before anything is called. Tensor extents are checked against
their storages before `as_strided` reads them.

Public API:
    CheckpointError(ValueError)                    every refusal; the message names the file
    load(path) -> Any                              the saved object, tensors as numpy arrays
    load_state_dict(path) -> dict[str, np.ndarray] the state dict in it (rule: `load_state_dict`)
    sha256_file(path) -> str                       hex sha256 of the file's bytes
    STORAGE_DTYPES: torch storage class name -> numpy dtype
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_NESTING = 100
# keys under which checkpoints commonly nest their state dict (see `load_state_dict`)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."

STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointError(ValueError):
    """A file that is not a safe, well-formed torch.save file (the message names the file)."""


class _BadTensor(CheckpointError):
    """Raised by the stand-ins (which do not know the file); `_unpickle` adds the path."""


class _StorageType:
    """Stand-in for a torch.*Storage class: only its element dtype is used (not callable)."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _Storage:
    """One root storage: `numel` elements of `dtype`; `raw` (uint8 [nbytes]) once read."""

    __slots__ = ("dtype", "key", "numel", "raw")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel, self.raw = key, dtype, numel, None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class _StorageView:
    """What a persistent id resolves to: `numel` elements of `dtype` from element `offset`."""

    __slots__ = ("dtype", "numel", "offset", "root")

    def __init__(self, root: _Storage, dtype: np.dtype, offset: int, numel: int):
        self.root, self.dtype, self.offset, self.numel = root, dtype, offset, numel


class _TensorRef:
    """A tensor to build once its storage bytes are read (legacy files put them last)."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: _StorageView, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _BadTensor(f"tensor {name} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor: records the view, builds nothing yet."""
    if not isinstance(storage, _StorageView):
        raise _BadTensor(f"tensor storage must be a storage, got {type(storage).__name__}")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool):
        raise _BadTensor(f"tensor storage_offset must be an int, got {storage_offset!r}")
    size, stride = _int_tuple("size", size), _int_tuple("stride", stride)
    if len(size) != len(stride):
        raise _BadTensor(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2 (grad flag, hooks, metadata dropped)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Stand-in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise _BadTensor(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS` and torch storage persistent ids."""

    def __init__(self, file: BinaryIO, path: str, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self._path, self._storages = path, storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._path}: refusing to load global {module}.{name}: only tensors, storages "
                f"and OrderedDict may be unpickled (torch.save of a state dict); allowed globals "
                f"are {sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS)}"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageView:
        if self._storages is None:
            raise CheckpointError(
                f"{self._path}: unexpected persistent id {pid!r} in a header pickle"
            )
        return _resolve_storage(pid, self._storages, self._path)


def _resolve_storage(pid: Any, storages: dict[str, _Storage], path: str) -> _StorageView:
    """('storage', storage_type, key, location, numel[, view_metadata]) -> a storage view."""
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
        raise CheckpointError(
            f"{path}: unsupported persistent id {kind!r}: only tensor storages are read (a "
            f"whole pickled nn.Module is refused; save its state_dict instead)"
        )
    if len(pid) not in (5, 6):
        raise CheckpointError(f"{path}: storage id must have 5 or 6 fields, got {len(pid)}")
    _, storage_type, key, _location, numel, *view = pid
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(
            f"{path}: storage {key!r} has no torch storage type: {storage_type!r}"
        )
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{path}: bad storage id {pid!r}")
    dtype = storage_type.dtype
    root = storages.setdefault(key, _Storage(key, dtype, numel))
    if root.nbytes < numel * dtype.itemsize:
        raise CheckpointError(f"{path}: storage {key!r} referenced with more bytes than it holds")
    view_metadata = view[0] if view else None
    if view_metadata is None:
        return _StorageView(root, dtype, 0, numel)
    if (
        not isinstance(view_metadata, tuple)
        or len(view_metadata) != 3
        or not all(isinstance(v, int) for v in view_metadata[1:])
    ):
        raise CheckpointError(f"{path}: bad storage view metadata {view_metadata!r}")
    _, offset, view_numel = view_metadata
    if offset < 0 or view_numel < 0 or (offset + view_numel) * dtype.itemsize > root.nbytes:
        raise CheckpointError(
            f"{path}: storage view [{offset}, {offset + view_numel}) outside storage {key!r} "
            f"of {root.numel} elements"
        )
    return _StorageView(root, dtype, offset, view_numel)


def _tensor(ref: _TensorRef, byteorder: str, path: str) -> np.ndarray:
    """The numpy array (a copy, native byte order) of a tensor whose storage has been read."""
    view, size, stride, offset = ref.storage, ref.size, ref.stride, ref.offset
    dtype = view.dtype
    if min(size, default=0) < 0:
        raise CheckpointError(f"{path}: tensor size {size} has a negative dimension")
    if 0 in size:
        return np.zeros(size, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= view.numel:
        raise CheckpointError(
            f"{path}: tensor of size {size}, stride {stride}, offset {offset} reaches outside "
            f"its storage {view.root.key!r} of {view.numel} elements"
        )
    start = view.offset * dtype.itemsize
    raw = view.root.raw[start : start + view.numel * dtype.itemsize]
    stored = np.dtype(np.uint8) if dtype == np.bool_ else dtype.newbyteorder(byteorder)
    flat = raw.view(stored)
    strides = tuple(s * stored.itemsize for s in stride)
    array = np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False)
    if dtype == np.bool_:
        return np.ascontiguousarray(array != 0)
    return array.astype(dtype.newbyteorder("="), order="C", copy=True)


def _materialize(obj: Any, byteorder: str, path: str, depth: int = 0) -> Any:
    """Replaces every `_TensorRef` in dicts / lists / tuples by its numpy array."""
    if depth > MAX_NESTING:
        raise CheckpointError(f"{path}: object nested deeper than {MAX_NESTING} levels")
    if isinstance(obj, _TensorRef):
        return _tensor(obj, byteorder, path)
    if isinstance(obj, (_StorageView, _StorageType)):
        raise CheckpointError(f"{path}: a bare storage outside any tensor is not supported")
    if isinstance(obj, Mapping):
        return {k: _materialize(v, byteorder, path, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, byteorder, path, depth + 1) for v in obj)
    return obj


_MALFORMED = (
    pickle.UnpicklingError,
    EOFError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    struct.error,
    MemoryError,
)


def _unpickle(f: BinaryIO, path: str, storages: dict[str, _Storage] | None = None) -> Any:
    """One pickle from `f` through `_SafeUnpickler`; bad input -> CheckpointError naming path."""
    try:
        return _SafeUnpickler(f, path, storages).load()
    except _BadTensor as e:
        raise CheckpointError(f"{path}: {e}") from None
    except _MALFORMED as e:
        raise CheckpointError(f"{path}: malformed pickle ({type(e).__name__}: {e})") from None


def _header(f: BinaryIO, path: str) -> Any:
    return _unpickle(f, path)


def _read_legacy(f: BinaryIO, path: str) -> Any:
    """The object of a legacy-format file (see the module docstring), tensors as arrays."""
    try:
        magic = _header(f, path)
    except CheckpointError as e:
        raise CheckpointError(
            f"not a torch.save file (neither zip nor legacy format): {e}"
        ) from None
    if magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a torch.save file (legacy magic number {magic!r})")
    protocol = _header(f, path)
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(
            f"{path}: legacy protocol version must be {LEGACY_PROTOCOL}, got {protocol!r}"
        )
    sys_info = _header(f, path)
    if not isinstance(sys_info, Mapping):
        raise CheckpointError(f"{path}: legacy sys-info must be a dict, got {sys_info!r}")
    byteorder = "<" if sys_info.get("little_endian", True) else ">"
    storages: dict[str, _Storage] = {}
    obj = _unpickle(f, path, storages)
    keys = _header(f, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(
            f"{path}: legacy storage key list must be a list of str, got {keys!r}"
        )
    for key in keys:
        if key not in storages:
            raise CheckpointError(
                f"{path}: storage {key!r} in the key list is not used by any tensor"
            )
        storage = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: truncated before storage {key!r}")
        (count,) = struct.unpack(byteorder + "q", head)
        if count != storage.numel:
            raise CheckpointError(
                f"{path}: storage {key!r} has {count} elements in the file, {storage.numel} in "
                f"its id"
            )
        raw = f.read(storage.nbytes)
        if len(raw) != storage.nbytes:
            raise CheckpointError(
                f"{path}: storage {key!r} truncated ({len(raw)} of {storage.nbytes} B)"
            )
        storage.raw = np.frombuffer(raw, np.uint8)
    missing = sorted(k for k, s in storages.items() if s.raw is None)
    if missing:
        raise CheckpointError(f"{path}: storages {missing} are used but not in the file")
    return _materialize(obj, byteorder, path)


def _read_zip(path: str) -> Any:
    """The object of a zip-format file (see the module docstring), tensors as arrays."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1 or not (pickles[0] == "data.pkl" or pickles[0].endswith("/data.pkl")):
            raise CheckpointError(f"{path}: a zip archive without exactly one <prefix>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        if any(n.startswith(f"{prefix}code/") for n in names):
            raise CheckpointError(f"{path}: a TorchScript archive (torch.jit.save), not torch.save")
        byteorder = "<"
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: byteorder must be 'little' or 'big', got {order!r}")
            byteorder = "<" if order == "little" else ">"
        storages: dict[str, _Storage] = {}
        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, storages)
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointError(
                    f"{path}: storage {key!r} ({name}) is missing from the archive"
                )
            if archive.getinfo(name).file_size != storage.nbytes:
                raise CheckpointError(
                    f"{path}: {name} holds {archive.getinfo(name).file_size} B, its id says "
                    f"{storage.nbytes} B"
                )
            storage.raw = np.frombuffer(archive.read(name), np.uint8)
    return _materialize(obj, byteorder, path)


def load(path: str) -> Any:
    """The object `torch.save` wrote to `path`, with every tensor as a numpy array.

    Args:
      path: a zip-format or legacy-format `torch.save` file.

    Returns:
      The saved object: dicts (OrderedDicts become dicts), lists, tuples, numbers, strings and
      numpy arrays (each a contiguous copy in native byte order, of the tensor's shape and
      dtype; bool, uint8, int8/16/32/64, float16, bfloat16 (ml_dtypes), float32, float64).

    Raises:
      CheckpointError (a ValueError), naming `path`: a refused global (anything but tensors, storages and
        OrderedDict), a malformed file, or a tensor reaching outside its storage.
      FileNotFoundError: no file at `path`.
    """
    path = str(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        return _read_legacy(f, path)


def _flatten(mapping: Mapping, prefix: str, out: dict[str, np.ndarray], path: str) -> None:
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict keys must be str, got {key!r}")
        if isinstance(value, np.ndarray):
            out[prefix + key] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{prefix}{key}.", out, path)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state dict saved in `path`: parameter name -> numpy array (as `load`).

    Rule: starting from the saved object (a mapping), while the mapping has no tensor among
    its values, descend into the first of `STATE_DICT_KEYS` ('state_dict', 'model_state_dict',
    'model') whose value is a mapping ({'state_dict': ..., 'best_prec1': ...} -> its
    'state_dict'). In the mapping reached, nested mappings are flattened to '.'-joined keys,
    non-tensor entries (numbers, strings, None, lists) are dropped, and a leading 'module.'
    (torch DataParallel) is removed from every key that has it. Use `load` to see the rest.

    Args:
      path: a zip-format or legacy-format `torch.save` file.

    Returns:
      {name: array}, e.g. {'conv1.weight': float32 [16, 3, 3, 3], ...}, in the file's order.

    Raises:
      CheckpointError (a ValueError): as `load`; or when the saved object is not a mapping, holds no tensor, or
        two keys collide once 'module.' is removed.
    """
    obj = load(path)
    while isinstance(obj, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping)")
    flat: dict[str, np.ndarray] = {}
    _flatten(obj, "", flat, path)
    if not flat:
        raise CheckpointError(f"{path} holds no tensors (top-level keys: {sorted(map(str, obj))})")
    state: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        if name in state:
            raise CheckpointError(
                f"{path}: key {key!r} collides with {name!r} once 'module.' is removed"
            )
        state[name] = value
    return state


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 (64 lowercase characters) of the bytes of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


KNOWN_SHA256 = {
    "resnet20-12fca82f.th": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "resnet32-d509ac18.th": "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    "resnet44-014dd654.th": "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    "resnet56-4bfd9763.th": "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    "efficientnet-lite0-57934424.pth": (
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    ),
    "efficientnet-lite1-77cc7160.pth": (
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"
    ),
    "efficientnet-lite2-9656183e.pth": (
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
    ),
}


def check_known_file(path: str) -> None:
    """Checks the sha256 of `path` when its file name is in `KNOWN_SHA256` (else nothing).

    Raises:
      ValueError: naming the file, its sha256 and the expected one, when they differ.
    """
    expected = KNOWN_SHA256.get(os.path.basename(path))
    if expected is None:
        return
    found = sha256_file(path)
    if found != expected:
        raise ValueError(
            f"weights file {path!r} has sha256 {found}, expected {expected} for "
            f"{os.path.basename(path)} (corrupt or a different file under a known name)"
        )
