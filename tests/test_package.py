"""The package imports beside detectron2, exposes its version, and explains a missing detectron2."""

import os
import re
import subprocess
import sys

import nl_detectron

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_string_matches_setup():
    assert re.fullmatch(r"\d+\.\d+\.\d+", nl_detectron.__version__)
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == nl_detectron.__version__


def test_imports_beside_detectron2():
    import detectron2

    assert detectron2.__file__ != nl_detectron.__file__
    assert os.path.dirname(nl_detectron.__file__) == os.path.join(REPO_ROOT, "nl_detectron")


def test_missing_detectron2_raises_helpful_import_error():
    # A None entry in sys.modules makes `import detectron2` raise ImportError, as if it were absent.
    code = (
        "import sys\n"
        "sys.modules['detectron2'] = None\n"
        "try:\n"
        "    import nl_detectron\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
        "else:\n"
        "    print('IMPORTED')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "IMPORT-ERROR:" in out.stdout, out.stdout + out.stderr
    message = out.stdout
    assert "detectron2" in message
    assert "scripts/ensure_env.sh" in message
    assert "pip install" in message
