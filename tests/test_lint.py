"""Static checks of the Python sources: no undefined names, unused imports or syntax errors (ruff's F and E9 rules)."""
import shutil
import subprocess
import sys
from pathlib import Path

from requires import require

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["wan_export", "runtime/wan_rt", "runtime/triton", "benchmarks", "tests"]


def test_ruff_finds_no_errors():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    require(ruff is not None, "ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--select", "F,E9", "--no-cache", *SOURCES], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
