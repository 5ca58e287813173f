"""The kernels' CPU tests run under the Triton interpreter, which must be switched on before
Triton is first imported in the process. So these modules are collected only in a process
started with ``TRITON_INTERPRET=1`` (``tests/kernels/test_interpreter.py`` starts one per
module); in any other process they are ignored and nothing here changes the environment.

Run them directly with ``TRITON_INTERPRET=1 python -m pytest tests/kernels/interpreted``.
"""

from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET") != "1":
    collect_ignore_glob = ["test_*.py"]
