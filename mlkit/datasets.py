"""Data for the challenges: `prepare(name)` makes `data/<name>/` ready and returns its path.

Sources, tried in order:
  1. `data/<name>/` itself, if its marker file `.prepared.json` (written when it was filled) still
     matches its files: their number and a digest of every file's path, size and modification time, so
     a changed, truncated, added or removed file is noticed;
  2. the offline mirror (`mirror` argument, else $DATA_MIRROR, else `../shared/data` next to the
     repository): an archive checked against the mirror's SHA256SUMS;
  3. the official download (URL or Kaggle).
Archives are extracted into a temporary folder inside `data/` and renamed into place, so
`data/<name>/` is either complete or absent; temporary folders of an interrupted extraction are removed by the
next one, and a folder that does not match its marker is moved aside to `data/<name>.replaced-<date>/`, never
deleted. Exits non-zero when a dataset it was asked to prepare is not ready.

    python -m mlkit.datasets [names...]   # no names: every dataset the mirror holds
"""
import dataclasses
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data"
MARKER = ".prepared.json"
TALE_COMMIT = "13c0638989b340d1bffce3d1dcd751bcd5d16215"  # Shen-Lab/TALE at the version its data files were read from


class DataError(RuntimeError):
    """A dataset cannot be prepared: no source, wrong checksum, broken archive."""


@dataclasses.dataclass(frozen=True)
class Archive:
    file: str  # file name in the mirror, URL, or "kaggle:<owner>/<dataset>"
    top: str = ""  # folder inside the archive that becomes data/<name>/ ("": the archive's root)
    checksum: str = ""  # "md5:<hex>" or "sha256:<hex>" of a download (mirror archives: SHA256SUMS)
    files: int = 0  # expected number of files, checked when no checksum is known


@dataclasses.dataclass(frozen=True)
class Dataset:
    mirror: Archive | None = None
    online: Archive | None = None
    manual: str = ""  # how to get it where there is no download


DATASETS = {
    "vv_test": Dataset(
        mirror=Archive("vv_test_data.tar.xz", top="data"),
        online=Archive("https://github.com/llaakson-vv/vv-test/raw/main/data.tar.xz", top="data", files=48_311),
    ),
    "cifar10": Dataset(
        mirror=Archive("cifar10_jpeg.tar.gz"),
        online=Archive(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", checksum="md5:c58f30108f718f92721af3b95e74349a"
        ),
    ),
    "intel": Dataset(
        mirror=Archive("intel_q75.tar.gz"),
        online=Archive("kaggle:puneet6060/intel-image-classification"),
    ),
    "scene15": Dataset(
        mirror=Archive("scene15.tar.gz"),
        manual="the 15-Scene stand-in for MIT Indoor67 exists only in the offline mirror",
    ),
    "indoor67": Dataset(
        online=Archive("http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar", top="Images",
                       files=15_620),
    ),
    "doom_crossing": Dataset(
        online=Archive("kaggle:andrewmvd/doom-crossing"),
    ),
    "wikitext2": Dataset(
        mirror=Archive("wikitext2_valid_test.tar.xz", top="wikitext2"),
        online=Archive(
            "https://wikitext.smerity.com/wikitext-2-v1.zip",  # the authors' host (the old S3 bucket answers 403)
            top="wikitext-2",
            checksum="md5:542ccefacc6c27f945fb54453812b3cd",
        ),
    ),
    "tale": Dataset(
        mirror=Archive("tale_data.tar.xz", top="tale"),
        online=Archive(f"https://github.com/Shen-Lab/TALE/archive/{TALE_COMMIT}.tar.gz", top=f"TALE-{TALE_COMMIT}/data",
                       files=47),
    ),
}


def prepare(name: str, root: str | Path = DATA_ROOT, mirror: str | Path | None = None) -> Path:
    """Make `root/<name>/` ready (see the module docstring) and return it."""
    return _prepare(name, Path(root), mirror)[0]


def find_mirror(mirror: str | Path | None = None) -> Path | None:
    """`mirror`, else $DATA_MIRROR, else ../shared/data next to the repository if it exists."""
    mirror = mirror or os.environ.get("DATA_MIRROR")
    if mirror:
        if not Path(mirror).is_dir():
            raise DataError(f"data mirror {mirror} is not a folder")
        return Path(mirror)
    default = REPO.parent / "shared" / "data"
    return default if default.is_dir() else None


def is_prepared(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("files") == count_files(folder) and marker.get("listing") == listing_digest(folder)


def count_files(folder: Path) -> int:
    """Files under `folder`, the marker excluded."""
    return sum(len(files) for _, _, files in os.walk(folder)) - (folder / MARKER).is_file()


def listing_digest(folder: Path) -> str:
    """A digest of every file's relative path, size and modification time (the marker excluded)."""
    digest = hashlib.sha1()
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            if path == folder / MARKER:
                continue
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def read_sha256sums(mirror: Path) -> dict[str, str]:
    """File name -> sha256 from the mirror's SHA256SUMS (sha256sum's format)."""
    try:
        lines = (mirror / "SHA256SUMS").read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read the mirror's SHA256SUMS: {e}") from e
    pairs = (line.split(maxsplit=1) for line in lines if line.strip())
    return {name.lstrip("*"): digest.lower() for digest, name in pairs}


def _prepare(name: str, root: Path, mirror: str | Path | None) -> tuple[Path, str]:
    """Like `prepare`, also saying what it did: ready, extracted, downloaded or adopted."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    dataset, folder = DATASETS[name], root / name
    if is_prepared(folder):
        return folder, "ready"
    if _upgrade_marker(folder):
        return folder, "ready"
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f".tmp-{name}-*"):  # an extraction killed before it could clean up
        shutil.rmtree(leftover, ignore_errors=True)
    mirror = find_mirror(mirror)
    path = _mirror_archive(dataset, mirror)
    if path:
        expected = read_sha256sums(mirror).get(path.name)
        if expected is None:
            raise DataError(f"{path.name} is not listed in {mirror / 'SHA256SUMS'}")
        _check_hash(path, "sha256", expected)
        with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=root) as tmp:
            _install(path, dataset.mirror, folder, expected, Path(tmp))
        return folder, "extracted"
    try:
        with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=root) as tmp:
            _download_and_install(name, dataset, folder, Path(tmp))
        return folder, "downloaded"
    except DataError:
        # No source, but a folder filled by hand (as the error messages suggest): accept it as it is.
        if folder.is_dir() and not (folder / MARKER).exists():
            _write_marker(folder, source="by hand", sha256="")
            return folder, "adopted"
        raise


def _upgrade_marker(folder: Path) -> bool:
    """A marker written before markers held a listing digest: trust its file count once, and add the digest."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if "listing" in marker or marker.get("files") != count_files(folder):
        return False
    _write_marker(folder, source=marker.get("source", ""), sha256=marker.get("sha256", ""), files=marker["files"])
    return True


def _mirror_archive(dataset: Dataset, mirror: Path | None) -> Path | None:
    if dataset.mirror and mirror and (mirror / dataset.mirror.file).is_file():
        return mirror / dataset.mirror.file
    return None


def _check_hash(path: Path, algorithm: str, expected: str) -> None:
    actual = file_hash(path, algorithm)
    if actual != expected.lower():
        raise DataError(f"{algorithm} mismatch for {path}: expected {expected}, got {actual}")


def _download_and_install(name: str, dataset: Dataset, folder: Path, tmp: Path) -> None:
    online = dataset.online
    hint = f"; or set DATA_MIRROR to a folder holding {dataset.mirror.file} and SHA256SUMS" if dataset.mirror else ""
    if online is None:
        raise DataError(f"{name} has no public download: {dataset.manual}{hint}")
    if online.file.startswith("kaggle:"):
        slug = online.file.removeprefix("kaggle:")
        path = _kaggle_download(name, slug, tmp, hint or f"; or unzip it by hand into {folder}")
    else:
        path = tmp / online.file.rsplit("/", 1)[-1]
        try:
            _download(online.file, path)
        except OSError as e:
            raise DataError(f"cannot download {name} from {online.file}: {e}{hint}") from e
    sha256 = file_hash(path)
    if online.checksum:
        _check_hash(path, *online.checksum.split(":"))
    else:
        print(f"{path.name}: sha256 {sha256} (no published checksum; checking the number of files instead)")
    _install(path, online, folder, sha256, tmp)


def _download(url: str, path: Path) -> None:
    """Stream `url` into `path` with a progress bar."""
    request = urllib.request.Request(url, headers={"User-Agent": "mlkit"})
    with urllib.request.urlopen(request, timeout=60) as response, open(path, "wb") as f:
        size = int(response.headers.get("Content-Length", 0)) or None
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {path.name}") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _kaggle_download(name: str, slug: str, tmp: Path, hint: str) -> Path:
    token = Path("~/.kaggle/kaggle.json").expanduser()
    has_credentials = token.is_file() or {"KAGGLE_USERNAME", "KAGGLE_KEY"} <= os.environ.keys()
    kaggle = shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))
    if not (kaggle and has_credentials):
        missing = [what for what, ok in (("the kaggle package", kaggle), ("credentials", has_credentials)) if not ok]
        raise DataError(
            f"{name} is the Kaggle dataset {slug}; missing: {' and '.join(missing)}. pip install kaggle, then set "
            f"KAGGLE_USERNAME and KAGGLE_KEY (in Colab: from its Secrets panel) or save your API token from "
            f"kaggle.com/settings as ~/.kaggle/kaggle.json{hint}"
        )
    try:
        subprocess.run([kaggle, "datasets", "download", "-d", slug, "-p", str(tmp)], check=True)
    except subprocess.CalledProcessError as e:
        raise DataError(f"kaggle could not download {slug} (exit status {e.returncode}){hint}") from e
    return tmp / f"{slug.split('/')[1]}.zip"


def _install(path: Path, archive: Archive, folder: Path, sha256: str, tmp: Path) -> None:
    """Extract `path` into `tmp`, mark the dataset's folder, then rename it to `folder`."""
    _extract(path, tmp / "extracted")
    source = tmp / "extracted" / archive.top
    if not source.is_dir():
        raise DataError(f"{path.name} has no top folder {archive.top}/")
    files = count_files(source)
    if archive.files and files != archive.files:
        raise DataError(f"{path.name} holds {files} files under {archive.top or '.'}/, expected {archive.files}")
    # The marker goes in before the rename, so a folder in place is always a complete one.
    _write_marker(source, source=archive.file, sha256=sha256, files=files)
    if folder.exists():
        aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        print(f"{folder} did not match its marker (changed or incomplete): moved to {aside}")
    source.rename(folder)


def _extract(path: Path, dest: Path) -> None:
    progress = dict(desc=f"extract {path.name}", unit="file")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for member in tqdm(archive.infolist(), **progress):
                    archive.extract(member, dest)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(dest, members=tqdm(archive.getmembers(), **progress), filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error) as e:
        raise DataError(f"cannot extract {path} (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _write_marker(folder: Path, source: str, sha256: str, files: int | None = None) -> None:
    files = count_files(folder) if files is None else files
    marker = {"source": source, "sha256": sha256, "files": files, "listing": listing_digest(folder)}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def main(names: list[str], root: Path = DATA_ROOT, mirror: str | Path | None = None) -> int:
    """Prepare `names` (default: every dataset that is ready or in the mirror); 1 if any failed."""
    try:
        mirror = find_mirror(mirror)
    except DataError as e:
        print(e)
        return 1
    failed = False
    for name in names or DATASETS:
        if not names and not (is_prepared(root / name) or _mirror_archive(DATASETS[name], mirror)):
            print(f"{name}: skipped (not in the offline mirror; name it to try its official source)")
            continue
        try:
            print(f"{name}: {_prepare(name, root, mirror)[1]}")
        except DataError as e:
            print(f"{name}: skipped ({e})")
            failed = True
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
