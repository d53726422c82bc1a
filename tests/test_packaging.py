"""Optional extras fail with a message that says how to get them. (The wheel itself is checked by
scripts/check_wheel.sh, which .ci/run runs: build, twine check, install into a fresh venv, import.)"""

from __future__ import annotations

import subprocess
import sys


def test_nsf_optax_without_jax_says_how_to_install():
    code = "import sys; sys.modules['jax'] = None\ntry:\n import nsf.optax\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'nsf[jax]'" in out
