"""Kernels compiled from CUDA C++ (``kernels.nvrtc``) launched through the CUDA driver API (ctypes).

What Triton's launcher does not offer: thread-block clusters (``cluster=``, up to 16 CTAs: sizes
over 8 are allowed per kernel), more than 48 KB of dynamic shared memory, and programmatic
dependent launch (``pdl=True``: the kernel may start before the previous one on the stream has
finished; it must execute ``griddepcontrol.wait`` before it reads that kernel's outputs). A launch
goes to torch's current stream of the tensors' device, so a CUDA graph being captured there
records it like any other kernel.

    kernel = CudaKernel.from_source(SOURCE, "my_kernel", ["ptr", "ptr", "i32"])
    kernel(LaunchConfig(grid=132, block=256, cluster=4, shared_mem=64 << 10), out, x, n)
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from infer_core.errors import CudaSourceError
from infer_core.kernels.nvrtc import compile_cubin

CLUSTER_DIMENSION = 4  # CUlaunchAttributeID
PROGRAMMATIC_STREAM_SERIALIZATION = 6
MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute
NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14
ARG_TYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "u32": ctypes.c_uint32, "i64": ctypes.c_int64,
             "u64": ctypes.c_uint64, "f32": ctypes.c_float}


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: the id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint32 * 16)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


def _dim3(value: int | Sequence[int]) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, int) or d < 1 for d in dims):
        raise CudaSourceError(f"a launch dimension must be 1 to 3 positive integers, not {value!r}.")
    return (*dims, *(1,) * (3 - len(dims)))  # type: ignore[return-value]


@dataclass(frozen=True)
class LaunchConfig:
    grid: int | tuple[int, ...]
    block: int | tuple[int, ...]
    shared_mem: int = 0  # dynamic shared memory per CTA, bytes
    cluster: int | tuple[int, ...] | None = None  # CTAs per cluster; the grid must be a multiple
    pdl: bool = False  # programmatic dependent launch


class Driver:
    """The CUDA driver library (ctypes), initialized once per process."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None

    @classmethod
    def lib(cls) -> ctypes.CDLL:
        with cls._lock:
            if cls._lib is None:
                try:
                    lib = ctypes.CDLL("libcuda.so.1")
                except OSError as e:
                    raise CudaSourceError(f"the CUDA driver (libcuda.so.1) could not be loaded ({e}): CUDA "
                                          "kernels need an NVIDIA GPU and its driver.") from e
                check(lib, lib.cuInit(0), "cuInit")
                cls._lib = lib
            return cls._lib


def check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(status, ctypes.byref(text))
        raise CudaSourceError(f"{what} failed: {(text.value or b'unknown error').decode()} (CUresult {status}).")


class CudaKernel:
    """One ``extern "C"`` kernel of a cubin with its argument types (``ARG_TYPES``: ``ptr`` takes
    a tensor or an address; a ``ctypes.Structure`` subclass, an instance of it passed by value,
    for a struct argument of the same layout), loaded into each device's primary context on
    first use."""

    def __init__(self, cubin: bytes, name: str, signature: Sequence[str | type[ctypes.Structure]]) -> None:
        unknown = [t for t in signature if not (t in ARG_TYPES or _is_struct(t))]
        if unknown:
            raise CudaSourceError(f"kernel {name!r} has argument types {unknown} that are not among "
                                  f"{sorted(ARG_TYPES)}.")
        self.cubin, self.name, self.signature = cubin, name, tuple(signature)
        self._functions: dict[int, ctypes.c_void_p] = {}
        self._modules: list[ctypes.c_void_p] = []
        self._shared_mem: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_source(cls, source: str, name: str, signature: Sequence[str | type[ctypes.Structure]], *,
                    arch: str | None = None,
                    options: Sequence[str] = ()) -> CudaKernel:
        """Compile ``source`` (cached, ``kernels.nvrtc``) for ``arch``, by default the current
        CUDA device's (``sm_90`` on an H100 or H200; ``sm_90a`` for wgmma and setmaxnreg)."""
        if arch is None:
            major, minor = torch.cuda.get_device_capability()
            arch = f"sm_{major}{minor}"
        return cls(compile_cubin(source, name, arch, options), name, signature)

    def _function(self, device: int) -> ctypes.c_void_p:
        with self._lock:
            if device not in self._functions:
                lib = Driver.lib()
                with torch.cuda.device(device):
                    torch.cuda.current_stream(device)  # (torch's primary context, current on this thread)
                    _ensure_context(lib, device)
                    module, function = ctypes.c_void_p(), ctypes.c_void_p()
                    check(lib, lib.cuModuleLoadData(ctypes.byref(module), self.cubin), f"loading {self.name!r}")
                    check(lib, lib.cuModuleGetFunction(ctypes.byref(function), module, self.name.encode()),
                          f"finding kernel {self.name!r} in its cubin")
                self._modules.append(module)
                self._functions[device] = function
            return self._functions[device]

    def _allow_shared(self, lib: ctypes.CDLL, function: ctypes.c_void_p, device: int, nbytes: int) -> None:
        """Raise the kernel's dynamic shared memory limit to ``nbytes`` when it is above 48 KB."""
        if nbytes > self._shared_mem.get(device, 48 << 10):
            check(lib, lib.cuFuncSetAttribute(function, MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes),
                  f"giving {self.name!r} {nbytes} bytes of shared memory")
            self._shared_mem[device] = nbytes

    def _ready(self, device: int, shared_mem: int) -> tuple[ctypes.CDLL, ctypes.c_void_p]:
        """The driver and this kernel's function on ``device`` (its context current), allowed
        ``shared_mem`` bytes of dynamic shared memory."""
        lib = Driver.lib()
        function = self._function(device)
        _ensure_context(lib, device)
        self._allow_shared(lib, function, device, shared_mem)
        return lib, function

    def _config(self, config: LaunchConfig, device: int, stream: torch.cuda.Stream | None):
        lib, function = self._ready(device, config.shared_mem)
        grid, block = _dim3(config.grid), _dim3(config.block)
        attrs = []
        if config.cluster is not None:
            cluster = _dim3(config.cluster)
            if any(g % c for g, c in zip(grid, cluster, strict=True)):
                raise CudaSourceError(f"the grid {grid} of {self.name!r} is not a multiple of its cluster {cluster}.")
            if cluster[0] * cluster[1] * cluster[2] > 8:
                check(lib, lib.cuFuncSetAttribute(function, NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
                      f"allowing clusters over 8 CTAs for {self.name!r}")
            attr = _Attribute(id=CLUSTER_DIMENSION)
            attr.value[0], attr.value[1], attr.value[2] = cluster
            attrs.append(attr)
        if config.pdl:
            attr = _Attribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
            attr.value[0] = 1
            attrs.append(attr)
        stream = stream if stream is not None else torch.cuda.current_stream(device)
        array = (_Attribute * max(1, len(attrs)))(*attrs)
        cfg = _Config(grid=(ctypes.c_uint * 3)(*grid), block=(ctypes.c_uint * 3)(*block),
                      shared_mem=config.shared_mem, stream=ctypes.c_void_p(stream.cuda_stream),
                      attrs=array, num_attrs=len(attrs))
        return lib, function, cfg, array

    def max_blocks_per_sm(self, block: int, shared_mem: int = 0, device: int | None = None) -> int:
        """How many CTAs of ``block`` threads with ``shared_mem`` bytes of dynamic shared memory
        fit on one SM at once (``cuOccupancyMaxActiveBlocksPerMultiprocessor``)."""
        device = torch.cuda.current_device() if device is None else device
        lib, function = self._ready(device, shared_mem)
        count = ctypes.c_int()
        check(lib, lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(count), function, block,
                                                                   ctypes.c_size_t(shared_mem)),
              f"counting resident CTAs of {self.name!r}")
        return count.value

    def max_active_clusters(self, config: LaunchConfig, device: int | None = None) -> int:
        """How many clusters of ``config.cluster`` CTAs (with its block and shared memory) can be
        resident at once (``cuOccupancyMaxActiveClusters``)."""
        if config.cluster is None:
            raise CudaSourceError("max_active_clusters needs a LaunchConfig with a cluster size.")
        device = torch.cuda.current_device() if device is None else device
        lib, function, cfg, _keep = self._config(replace(config, pdl=False), device, None)
        count = ctypes.c_int()
        check(lib, lib.cuOccupancyMaxActiveClusters(ctypes.byref(count), function, ctypes.byref(cfg)),
              f"counting resident clusters of {self.name!r}")
        return count.value

    def __call__(self, config: LaunchConfig, *args: object, stream: torch.cuda.Stream | None = None) -> None:
        if len(args) != len(self.signature):
            names = ", ".join(k if isinstance(k, str) else k.__name__ for k in self.signature)
            raise CudaSourceError(f"kernel {self.name!r} takes {len(self.signature)} arguments ({names}), "
                                  f"not {len(args)}.")
        values = []
        device = None
        for kind, arg in zip(self.signature, args, strict=True):
            if _is_struct(kind):
                if not isinstance(arg, kind):
                    raise CudaSourceError(f"kernel {self.name!r} takes a {kind.__name__}, not {type(arg).__name__}.")
                values.append(arg)
                continue
            if kind == "ptr" and isinstance(arg, torch.Tensor):
                if arg.is_cuda:
                    device = arg.device.index if device is None else device
                elif not arg.is_pinned():
                    raise CudaSourceError(f"kernel {self.name!r} got a tensor on {arg.device}: pass CUDA "
                                          "tensors or pinned host tensors.")
                arg = arg.data_ptr()
            values.append(ARG_TYPES[kind](arg))
        device = torch.cuda.current_device() if device is None else device
        lib, function, cfg, _keep = self._config(config, device, stream)
        params = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values))
        check(lib, lib.cuLaunchKernelEx(ctypes.byref(cfg), function, params, None), f"launching {self.name!r}")


def _is_struct(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, ctypes.Structure)


def _ensure_context(lib: ctypes.CDLL, device: int) -> None:
    """Make ``device``'s primary context (the one torch uses) current on this thread, unless it is."""
    ctx, dev = ctypes.c_void_p(), ctypes.c_int(-1)
    check(lib, lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if ctx.value:
        check(lib, lib.cuCtxGetDevice(ctypes.byref(dev)), "cuCtxGetDevice")
    if dev.value != device:
        check(lib, lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        check(lib, lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
