import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_challenge(challenge: str, module: str = "common"):
    """Import `<challenge>/<module>.py` as `<challenge>_<module>`: challenges name their modules alike (`common`),
    so importing them by that name in one test process would make them shadow each other."""
    name = f"{challenge}_{module}"
    if name not in sys.modules:
        if str(ROOT / challenge) not in sys.path:
            sys.path.append(str(ROOT / challenge))  # for a challenge's own sibling modules
        spec = importlib.util.spec_from_file_location(name, ROOT / challenge / f"{module}.py")
        sys.modules[name] = loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
    return sys.modules[name]
