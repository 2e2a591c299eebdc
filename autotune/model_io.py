"""Loading models, input shapes, preprocessing and writing models that share weights.

* :func:`load_model` reads a model without pulling external data into memory, so
  models over 2 GB (which must store weights in external files) are handled: their
  weights stay on disk and every written model refers to the same files.
* :func:`parse_input_shapes` parses ``name:1x3x224x224,other:1x128``.
* :func:`preprocess` produces the FP32 model all measurements use: BatchNormalization
  after Conv folded into the Conv, an all-zero Gemm ``C`` removed (ONNX Runtime rules),
  a constant bias Add after Conv/Gemm folded into the op's bias,
  and the opset raised to what the Q/DQ nodes need (INT8 per-channel: 13, FP8: 19).
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
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from .graph import GraphIndex

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
        dims = vi.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if name in given:
            shape = given[name]
            if len(shape) != len(static):
                raise ValueError(f"--input-shapes {name}: rank {len(shape)} but the model input has rank {len(static)}")
            for k, (g, s) in enumerate(zip(shape, static)):
                if s is not None and s != g:
                    raise ValueError(f"--input-shapes {name}: dimension {k} is {g} but the model fixes it to {s}")
            out[name] = tuple(shape)
        elif sample is not None and name in sample:
            out[name] = tuple(sample[name].shape)
        elif all(s is not None for s in static):
            out[name] = tuple(static)  # type: ignore[arg-type]
        else:
            dyn = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
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

    Folding BN and bias Adds and cleaning Gemm leave the math unchanged (up to float
    rounding);
    raising the opset uses ONNX's version converter.
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
    n = fold_batchnorm(m, base_dir)
    if n:
        notes.append(f"folded {n} BatchNormalization node(s) into Conv")
    if clean_gemm:
        n = remove_zero_gemm_bias(m, base_dir)
        if n:
            notes.append(f"removed the all-zero C input of {n} Gemm node(s)")
    n = fold_bias_add(m, base_dir)
    if n:
        notes.append(f"folded {n} constant bias Add node(s) into Conv/Gemm")
    return m, notes


def fold_batchnorm(model: onnx.ModelProto, base_dir: str = "") -> int:
    """Fold ``Conv -> BatchNormalization`` (constant parameters, single consumer) in place.

    The Conv gets scaled weights and a bias; the BN disappears and the Conv writes the
    BN's output tensor. Returns the number of folded BNs.
    """
    g = GraphIndex(model, infer_shapes=False, base_dir=base_dir)
    remove: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for i, node in enumerate(g.nodes):
        if node.op_type != "BatchNormalization" or len(node.output) > 1 and any(node.output[1:]):
            continue
        if any(a.name == "training_mode" and a.i for a in node.attribute):
            continue
        p = g.producer.get(node.input[0])
        if p is None or g.nodes[p].op_type != "Conv" or len(g.consumers.get(node.input[0], ())) != 1:
            continue
        if node.input[0] in g.graph_outputs:
            continue
        conv = g.nodes[p]
        params = [g.constant_value(x) for x in node.input[1:5]]
        w = g.constant_value(conv.input[1])
        b = g.constant_value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or any(x is None for x in params) or (len(conv.input) > 2 and conv.input[2] and b is None):
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (np.asarray(x, dtype=np.float64) for x in params)
        factor = scale / np.sqrt(var + eps)
        w_new = (w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        b0 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        b_new = ((b0 - mean) * factor + bias).astype(w.dtype)
        wname, bname = f"{conv.output[0]}__bnfold_w", f"{conv.output[0]}__bnfold_b"
        new_inits += [numpy_helper.from_array(w_new, wname), numpy_helper.from_array(b_new, bname)]
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = node.output[0]
        remove.add(i)
    _drop_nodes(model, remove, new_inits)
    return len(remove)


def _drop_nodes(model: onnx.ModelProto, remove: set, new_inits: list) -> None:
    """Remove the nodes at the indices ``remove``, add ``new_inits`` and prune dead initializers."""
    if not remove:
        return
    keep = [n for k, n in enumerate(model.graph.node) if k not in remove]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(new_inits)
    prune_unused_initializers(model)


def fold_bias_add(model: onnx.ModelProto, base_dir: str = "") -> int:
    """Fold ``Conv -> Add(constant per-channel)`` and ``Gemm -> Add(constant [N])`` in place.

    Exporters such as jax2onnx emit the bias as a separate Add; a Q/DQ'd Conv can then
    not absorb it (ONNX Runtime's QLinearConv needs ``Conv -> Q``), so the bias moves
    into the op's own bias input. Returns the number of folded Adds.
    """
    g = GraphIndex(model, infer_shapes=False, base_dir=base_dir)
    remove: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for i, node in enumerate(g.nodes):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for data_slot in (0, 1):
            x, c = node.input[data_slot], node.input[1 - data_slot]
            p = g.producer.get(x)
            if p is None or p in remove or len(g.consumers.get(x, ())) != 1 or x in g.graph_outputs:
                continue
            op = g.nodes[p]
            if op.op_type not in ("Conv", "Gemm") or c not in g.constants:
                continue
            bias = g.constant_value(c)
            w = g.constant_value(op.input[1]) if len(op.input) > 1 else None
            if bias is None or w is None or bias.dtype != w.dtype:
                continue
            if op.op_type == "Conv":
                channels = w.shape[0]
                ok = bias.size == channels and (bias.ndim == 1 or bias.shape == (1, channels) + (1,) * (bias.ndim - 2) or bias.shape == (channels,) + (1,) * (bias.ndim - 1))
            else:
                trans_b = next((a.i for a in op.attribute if a.name == "transB"), 0)
                channels = w.shape[0] if trans_b else w.shape[1]
                ok = bias.size == channels and bias.ndim <= 2 and bias.shape[-1] == channels
                has_c = len(op.input) > 2 and bool(op.input[2])
                # beta scales C; without a C it is irrelevant (jax2onnx writes beta=0)
                ok = ok and (not has_c or next((a.f for a in op.attribute if a.name == "beta"), 1.0) == 1.0)
            if not ok:
                continue
            old = g.constant_value(op.input[2]) if len(op.input) > 2 and op.input[2] else np.zeros(channels, w.dtype)
            if old is None or old.size != channels:
                continue
            fused = (old.reshape(-1) + bias.reshape(-1)).astype(w.dtype)
            name = f"{node.output[0]}__folded_bias"
            new_inits.append(numpy_helper.from_array(fused, name))
            while len(op.input) < 3:
                op.input.append("")
            op.input[2] = name
            for a in op.attribute:
                if a.name == "beta":
                    a.f = 1.0
            op.output[0] = node.output[0]
            remove.add(i)
            break
    _drop_nodes(model, remove, new_inits)
    return len(remove)


def remove_zero_gemm_bias(model: onnx.ModelProto, base_dir: str = "") -> int:
    """Drop the ``C`` input of Gemm nodes whose ``C`` is a constant all-zero tensor."""
    g = GraphIndex(model, infer_shapes=False, base_dir=base_dir)
    count = 0
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = g.constant_value(node.input[2])
            if c is not None and not np.any(c):
                del node.input[2:]
                count += 1
    if count:
        prune_unused_initializers(model)
    return count


def prune_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node (or subgraph) or graph output reads."""
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {x for sn in a.g.node for x in sn.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        inputs = [v for v in model.graph.input if v.name in used or v.name not in {t.name for t in keep}]
        del model.graph.input[:]
        model.graph.input.extend(inputs)


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
