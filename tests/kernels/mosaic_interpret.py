"""Run a Mosaic GPU Pallas kernel on the CPU with jax's GPU interpreter (``jax._src``, private, jax >= 0.10).

The interpreter simulates shared memory, TMA copies, barriers and wgmma on logical (untiled, unswizzled) buffers, so
it checks a kernel's grid, pipeline and indexing arithmetic but not its shared-memory layout (the GPU smoke test
does). jax 0.10.2's interpreter reads a wgmma operand through index transforms only; :func:`gpu_interpret` also
honours a trailing ``plgpu.transpose_ref`` on the B operand (the K-major token tile of an fp8 wgmma), which it
otherwise rejects. Tests call :func:`require` first: it skips where this jax has no such interpreter.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest


def require():
    """Skip the calling test unless this jax has the Mosaic GPU interpreter internals used here."""
    try:
        from jax._src.pallas.mosaic.interpret import utils  # noqa: F401
        from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as gc
        from jax._src.pallas.mosaic_gpu.interpret import params  # noqa: F401
    except ImportError as e:  # pragma: no cover - other jax versions
        pytest.skip(f"no Mosaic GPU interpreter in this jax ({e})")
    for name in ("wgmma", "_get_shared_memory", "HostAllocationKey", "_remove_noop_transforms"):
        if not hasattr(gc, name):  # pragma: no cover
            pytest.skip(f"jax's Mosaic GPU interpreter has no {name}")


def _transposed_b_wgmma(original):
    """The interpreter's wgmma callback, with ``acc += a @ transpose(b)`` where b's last transform is a transpose."""
    import jax
    from jax._src.pallas.mosaic.interpret import utils as iu
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as gc
    from jax._src.state.types import TransposeTransform

    def wgmma(*, b_transforms, **kw):
        if not b_transforms or not isinstance(b_transforms[-1], TransposeTransform):
            return original(b_transforms=b_transforms, **kw)
        memory = gc._get_shared_memory()
        thread = memory.get_global_thread_id(int(kw["device_id"]), int(kw["thread_id"]))
        info = iu.GPULoggingInfo(device_id=int(kw["device_id"]), thread_id=int(kw["thread_id"]),
                                 grid_point_coords=tuple(int(c) for c in kw["grid_point_coords"]),
                                 source_info=kw.get("source_info"))

        def view(name, transforms):
            key = gc.HostAllocationKey.from_array(kw[f"{name}_allocation_key_as_array"])
            rng = iu.to_range(jax.tree.map(int, gc._remove_noop_transforms(transforms)))
            return key, rng, memory.get_buffer_content(key, rng, thread, logging_info=info)[0]

        _, _, a = view("a", kw["a_transforms"])
        _, _, b = view("b", tuple(b_transforms[:-1]))
        key, rng, acc = view("acc", kw["acc_transforms"])
        b = np.transpose(b, b_transforms[-1].permutation)
        prod = np.matmul(a.astype(np.float32), b.astype(np.float32))  # E4M3 / 16-bit products are exact in f32
        memory.store_buffer_content(key, rng, acc + prod.astype(kw["acc_dtype"]), thread, logging_info=info)
        return kw["token"]

    return wgmma


@contextlib.contextmanager
def gpu_interpret():
    """Within the block, Mosaic GPU kernels traced run in jax's GPU interpreter (CPU)."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as gc
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams, force_gpu_interpret_mode

    original = gc.wgmma
    gc.wgmma = _transposed_b_wgmma(original)
    try:
        with force_gpu_interpret_mode(InterpretGPUParams()):
            yield
    except BaseException:
        # the interpreter keeps per-process state that a failed kernel leaves behind (its docs: reset before reuse)
        reset = getattr(gc, "reset_gpu_interpret_mode_state", None)
        if reset is not None:
            reset()
        raise
    finally:
        gc.wgmma = original
