"""``kernels.pdl.use_pdl``: programmatic dependent launch only for CUDA tensors (capability 9.0
and later; the GPU side is ``test_engine_gpu.py``), and never with ``INFER_PDL=0``."""

from __future__ import annotations

import torch

from infer_core.kernels.pdl import use_pdl


def test_no_pdl_off_cuda():
    assert not use_pdl(torch.zeros(2))


def test_infer_pdl_0_turns_it_off_before_the_device_is_asked(monkeypatch):
    class FakeCuda:
        is_cuda = True

        @property
        def device(self):  # asking the device means the switch was not read first
            raise AssertionError("INFER_PDL=0 must decide without the device")

    monkeypatch.setenv("INFER_PDL", "0")
    assert not use_pdl(FakeCuda())  # type: ignore[arg-type]
