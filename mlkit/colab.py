"""What a notebook's setup cell does in Google Colab once the repository is cloned.

Colab's kernel already has torch, numpy, pandas and most of requirements.txt: replacing them inside a
running kernel breaks it, so only the distributions that are missing are installed (unpinned versions of
the ones present are kept). tale also needs BLAST+ and Debian's Swiss-Prot 2014 package, from apt.
"""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROVIDED_BY = {"tensorflow-cpu": "tensorflow"}  # Colab's build of the same library under another name
SYSTEM_PACKAGES = {"tale": ["ncbi-blast+", "diamond-aligner"]}


def missing_requirements(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """The lines of `requirements` whose distribution is not installed at all."""
    missing = []
    for line in requirements.read_text().split():
        name = line.split("==")[0]
        try:
            importlib.metadata.version(PROVIDED_BY.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def install(challenge: str) -> None:
    """pip-install the missing requirements and apt-install the challenge's system packages."""
    if missing := missing_requirements():
        print("installing what Colab lacks:", " ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    if packages := SYSTEM_PACKAGES.get(challenge):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)
