import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
NETS = str(TESTS / "nets.py")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")


@pytest.fixture
def cli(capsys):
    """Run the tinytlc CLI in-process: returns (exit code, stdout, stderr)."""
    from tinytlc.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
