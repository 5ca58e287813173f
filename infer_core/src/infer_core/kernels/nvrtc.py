"""CUDA C++ kernel sources compiled to cubins at run time by NVRTC, cached on disk.

For what Triton cannot express on Hopper (thread-block clusters, distributed shared memory),
without a build step or a CUDA toolkit: NVRTC ships as the ``nvidia-cuda-nvrtc`` wheel that CUDA
builds of torch depend on, and it compiles for any architecture on any machine (no GPU needed).
The include path holds the CUDA headers that Triton's wheel ships (``cuda_bf16.h``,
``cuda_fp16.h``, ...), not cooperative groups (they need CCCL): write cluster operations as
inline PTX, and give kernels ``extern "C"`` names.

A cubin is cached under ``cache_dir()/cuda/`` by the hash of the source, the architecture, the
options and NVRTC's version, so an engine start compiles each kernel once per machine.
``$INFER_NVRTC`` names the library when it is not found where torch's wheels put it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from infer_core.cache_dir import cache_dir
from infer_core.errors import CudaSourceError

NO_NVRTC = ("CUDA kernels compiled at run time need NVRTC, and none was found: install the "
            "nvidia-cuda-nvrtc wheel that matches your CUDA (CUDA builds of torch bring it), or set "
            "INFER_NVRTC to the path of libnvrtc.so.")
HEADER_HINT = (" (the include path holds only the CUDA headers that Triton ships, such as cuda_bf16.h and "
               "cuda_fp16.h, not cooperative_groups: write cluster operations as inline PTX)")


def cuda_include_dirs() -> list[str]:
    """The CUDA headers on NVRTC's include path: those that Triton's wheel ships
    (``triton/backends/nvidia/include``: cuda_bf16.h, cuda_fp16.h, ...), when Triton is installed."""
    try:
        import triton
    except ImportError:
        return []
    found = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    return [str(found)] if (found / "cuda_bf16.h").exists() else []


def find_nvrtc() -> str | None:
    """The path of libnvrtc: ``$INFER_NVRTC``, else the nvidia wheels' (CUDA 13, then 12) in
    ``sys.path``, else the system's; None when there is none."""
    explicit = os.environ.get("INFER_NVRTC")
    if explicit:
        return explicit
    for entry in sys.path:
        for pattern in ("nvidia/cu13/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*"):
            found = sorted(p for p in glob.glob(os.path.join(entry, pattern)) if "builtins" not in p)
            if found:
                return found[-1]
    return ctypes.util.find_library("nvrtc")


class Nvrtc:
    """The NVRTC library (ctypes)."""

    def __init__(self, path: str | None = None) -> None:
        path = path or find_nvrtc()
        if path is None:
            raise CudaSourceError(NO_NVRTC)
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise CudaSourceError(f"NVRTC at {path} could not be loaded ({e}): set INFER_NVRTC to a "
                                  "libnvrtc.so that matches your CUDA.") from e
        self.path = path
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, status: int, what: str) -> None:
        if status:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise CudaSourceError(f"{what} failed: {self.lib.nvrtcGetErrorString(status).decode()}.")

    def compile(self, source: str, name: str, arch: str, options: Sequence[str] = ()) -> bytes:
        """``source`` compiled for ``arch`` (e.g. ``sm_90a``); returns the cubin."""
        lib = self.lib
        program = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0,
                                           None, None), "nvrtcCreateProgram")
        try:
            flags = [f"--gpu-architecture={arch}", "-std=c++17",
                     *(f"--include-path={d}" for d in cuda_include_dirs()), *options]
            status = lib.nvrtcCompileProgram(program, len(flags), (ctypes.c_char_p * len(flags))(
                *(f.encode() for f in flags)))
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            text = log.value.decode(errors="replace").strip()
            if status:
                hint = HEADER_HINT if "open source file" in text else ""
                raise CudaSourceError(f"kernel source {name!r} did not compile for {arch}{hint}:\n{text}")
            self._check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
            return cubin.raw
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))


def compile_cubin(source: str, name: str, arch: str, options: Sequence[str] = (), *, nvrtc: Nvrtc | None = None,
                  cache: Path | None = None) -> bytes:
    """The cubin of ``source`` for ``arch``, from ``cache`` (default ``cache_dir()/cuda``) when
    it was compiled before, else compiled by NVRTC and stored there (atomically)."""
    nvrtc = nvrtc or Nvrtc()
    key = hashlib.sha256("\0".join([source, arch, *options, f"{nvrtc.version[0]}.{nvrtc.version[1]}"]).encode()).hexdigest()[:24]
    folder = cache or cache_dir() / "cuda"
    path = folder / f"{name}-{arch}-{key}.cubin"
    if path.exists():
        return path.read_bytes()
    cubin = nvrtc.compile(source, name, arch, options)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(cubin)
    os.replace(tmp, path)
    return cubin
