import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_challenge(challenge: str):
    """Import `<challenge>/common.py` as `<challenge>_common`: every challenge names its module `common`,
    so importing them by that name in one test process would make them shadow each other."""
    name = f"{challenge}_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / challenge / "common.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]
