"""Loading models, input shapes, preprocessing and writing models that share weights.

* :func:`load_model` reads a model without pulling external data into memory, so
  models over 2 GB (which must store weights in external files) are handled: their
  weights stay on disk and every written model refers to the same files.
* :func:`parse_input_shapes` parses ``name:1x3x224x224,other:1x128``.
* :func:`preprocess` produces the FP32 model all measurements use: the opset raised to
  what the Q/DQ nodes need (INT8 per-channel: 13, FP8: 19), then :mod:`onnx_toolbox`'s
  folds: BatchNormalization after Conv into the Conv, an all-zero Gemm ``C`` removed
  (ONNX Runtime rules), a constant bias Add after Conv/Gemm into the op's bias.
* :class:`ModelWriter` saves models into a directory where the external weight files
  are copied once.

Example::

    >>> shapes = parse_input_shapes("x:1x3x224x224,mask:1x128")
    >>> shapes["x"]
    (1, 3, 224, 224)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx.external_data_helper import uses_external_data

from onnx_toolbox import drop_zero_gemm_c, fold_batchnorm, fold_bias, static_dims

#: protobuf cannot serialize more than 2 GB; stay well below it for inline tensors
INLINE_LIMIT_BYTES = 1_800_000_000


class ModelError(ValueError):
    """A model that cannot be read or tuned (missing file, invalid graph, ...)."""


def load_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """Load ``path`` without external data; returns ``(model, base_dir)``.

    Raises:
        ModelError: the file is missing or not an ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"cannot read {path} as an ONNX model: {e}") from e
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph")
    return model, str(path.parent.resolve())


def external_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external data files the model refers to."""
    files: list[str] = []
    for t in _all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in files:
                files.append(loc)
    return files


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def fingerprint(model: onnx.ModelProto) -> str:
    """Structural fingerprint (ops, wiring, initializer names/shapes) of a model."""
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(repr((n.op_type, tuple(n.input), tuple(n.output))).encode())
    for t in model.graph.initializer:
        h.update(repr((t.name, tuple(t.dims), t.data_type)).encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------- input shapes
def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224,other:1x128`` into ``{name: (1, 3, 224, 224), ...}``.

    Raises:
        ValueError: with the offending item when the text is malformed.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    if not text:
        return shapes
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise ValueError(f"malformed --input-shapes item {item!r}: expected NAME:DxDxD, e.g. input:1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ValueError(f"malformed --input-shapes item {item!r}: dimensions must be integers separated by 'x'") from None
        if any(d <= 0 for d in shape):
            raise ValueError(f"malformed --input-shapes item {item!r}: dimensions must be positive")
        shapes[name] = shape
    return shapes


def resolve_input_shapes(model: onnx.ModelProto, given: dict[str, tuple[int, ...]], sample: dict[str, np.ndarray] | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every data input: ``given`` > a calibration sample > the graph.

    A dimension is dynamic when it is a ``dim_param``, unset, or a ``dim_value <= 0``
    (the legacy ``-1`` marker several exporters write; :func:`onnx_toolbox.static_dims`).

    Raises:
        ValueError: a name in ``given`` is not an input, a given shape has the wrong
            rank or contradicts a static dimension, or a dynamic dimension is left.
    """
    init = {t.name for t in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in init}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise ValueError(f"--input-shapes names {unknown} are not model inputs (inputs: {sorted(inputs)})")
    out: dict[str, tuple[int, ...]] = {}
    for name, vi in inputs.items():
        static = static_dims(vi.type)
        if name in given:
            shape = given[name]
            if static is not None and len(shape) != len(static):
                raise ValueError(f"--input-shapes {name}: rank {len(shape)} but the model input has rank {len(static)}")
            for k, (g, s) in enumerate(zip(shape, static or ())):
                if s is not None and s != g:
                    raise ValueError(f"--input-shapes {name}: dimension {k} is {g} but the model fixes it to {s}")
            out[name] = tuple(shape)
        elif sample is not None and name in sample:
            out[name] = tuple(sample[name].shape)
        elif static is None:
            raise ValueError(f"input {name!r} has no shape in the model; pass --input-shapes {name}:DxDx...")
        elif all(s is not None for s in static):
            out[name] = tuple(static)  # type: ignore[arg-type]
        else:
            dims = vi.type.tensor_type.shape.dim
            dyn = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d, s in zip(dims, static) if s is None]
            raise ValueError(
                f"input {name!r} has dynamic dimensions {dyn}; pass --input-shapes {name}:"
                + "x".join(str(s) if s is not None else "N" for s in static)
            )
    return out


def with_static_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose graph inputs have the given static shapes (for shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    return m


# ---------------------------------------------------------------- preprocessing
def opset_version(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


def preprocess(model: onnx.ModelProto, base_dir: str, min_opset: int, clean_gemm: bool) -> tuple[onnx.ModelProto, list[str]]:
    """The FP32 model every scheme is built on, plus notes on what changed.

    Raising the opset uses ONNX's version converter. The folds (BatchNormalization into Conv, the all-zero
    Gemm ``C`` when ``clean_gemm``, constant bias Adds into Conv/Gemm) are :mod:`onnx_toolbox`'s onnx-ir
    passes; they leave the math unchanged up to float rounding, and the folded op writes the tensor the
    removed node wrote, so tensor names (calibration scales, Q/DQ baselines) keep referring to the same values.
    External-data weights stay on disk (read from ``base_dir`` only where a fold needs their values).
    """
    notes: list[str] = []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if opset_version(m) < min_opset:
        before = opset_version(m)
        try:
            m = onnx.version_converter.convert_version(m, min_opset)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot convert the model from opset {before} to {min_opset} (needed for the Q/DQ nodes): {e}") from e
        notes.append(f"opset {before} -> {min_opset} (Q/DQ needs {min_opset})")
    folded = ir.serde.deserialize_model(m)
    if base_dir:
        ir.external_data.set_base_dir(folded.graph, base_dir)
    n_bn = fold_batchnorm(folded)
    n_c = drop_zero_gemm_c(folded) if clean_gemm else 0
    n_bias = fold_bias(folded)
    if n_bn:
        notes.append(f"folded {n_bn} BatchNormalization node(s) into Conv")
    if n_c:
        notes.append(f"removed the all-zero C input of {n_c} Gemm node(s)")
    if n_bias:
        notes.append(f"folded {n_bias} constant bias Add node(s) into Conv/Gemm")
    if n_bn or n_c or n_bias:  # untouched models keep their exact proto
        m = ir.serde.serialize_model(folded)
    return m, notes


# ---------------------------------------------------------------- writing
class ModelWriter:
    """Writes models into ``directory`` so they can read the original external data.

    External data files of the source model are copied into ``directory`` once; models
    written afterwards keep their references (one copy serves every scheme).
    Tensors added in memory are stored inline unless the model would exceed the
    protobuf limit, in which case they go to ``<name>.data`` next to the model.

    Example::

        >>> w = ModelWriter("out", base_dir, model)     # doctest: +SKIP
        >>> w.save(model, "candidate.onnx")              # doctest: +SKIP
        PosixPath('out/candidate.onnx')
    """

    def __init__(self, directory: str | os.PathLike, base_dir: str, model: onnx.ModelProto, inline_limit: int = INLINE_LIMIT_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.inline_limit = inline_limit
        for loc in external_files(model):
            src = Path(base_dir) / loc
            dst = self.directory / loc
            if dst.exists() or not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            # a copy, not a link: onnx refuses hard-linked data files (hard-link attack
            # check) and ONNX Runtime refuses locations outside the model's directory
            shutil.copyfile(src, dst)

    def save(self, model: onnx.ModelProto, name: str) -> Path:
        """Write ``model`` as ``directory/name`` and return the path."""
        path = self.directory / name
        if model.ByteSize() > self.inline_limit:
            data = self.directory / (name + ".data")
            if data.exists():  # onnx appends to an existing data file
                data.unlink()
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # saving with external data moves tensors out of the proto
            onnx.save_model(
                copy,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=name + ".data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(path))
        return path
