"""Generated documentation is current."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pass_docs_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_pass_docs.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
