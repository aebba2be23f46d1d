"""The process's one OpenVINO Core (`openvino_core`), shared by builds, engines and the
machine description. Its own module, importing nothing of edgeseg, so the backend and
`edgeseg.runtime.compat` can both reach it. OpenVINO is imported on first use."""

from __future__ import annotations

import threading
from typing import Any

_CORE: Any = None
_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept until exit: every build, engine and device
    query shares it. Each Core loads its own CPU plugin, and on Linux that plugin installs a
    larger signal stack for AMX in the creating thread and, when freed, restores the one it
    found and unmaps its own; Cores freed in any order but the reverse of their creation
    leave the thread's signal stack on unmapped memory, which a later allocation reuses and
    the next signal handled there overwrites. One Core, never freed, never does that."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino

            _CORE = openvino.Core()
        return _CORE
