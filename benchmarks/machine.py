"""The CPU a benchmark ran on, as every figure is written beside it (shared by the scripts)."""

from __future__ import annotations

import platform
import subprocess


def cpu_flags() -> str:
    """The CPU's model and its vector flags (lscpu), written beside every figure."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip()
    flags = fields.get("Flags", "").split()
    vector = [f for f in flags if f.startswith(("avx", "fma", "f16c", "amx", "sve", "asimd"))]
    return f"{model}; {' '.join(vector) or 'no AVX/NEON flags'}"
