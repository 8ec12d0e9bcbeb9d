import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from mlkit import datasets
from mlkit.datasets import DATASETS, MARKER, Archive, DataError, Dataset, prepare

FILES = {"toy/train/a/1.txt": b"one", "toy/train/b/2.txt": b"two", "toy/test/a/3.txt": b"three"}


def write_tar(path, files=FILES):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_sums(mirror, sums):
    (mirror / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(DATASETS, "toy", Dataset(mirror=Archive("toy.tar.gz", top="toy")))


@pytest.fixture
def mirror(tmp_path, toy):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_tar(mirror / "toy.tar.gz")
    write_sums(mirror, {"toy.tar.gz": sha256(mirror / "toy.tar.gz")})
    return mirror


@pytest.fixture
def root(tmp_path):
    return tmp_path / "data"


def leftovers(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_extracts_from_mirror(root, mirror):
    folder = prepare("toy", root=root, mirror=mirror)
    assert folder == root / "toy"
    assert (folder / "train/b/2.txt").read_bytes() == b"two"
    marker = json.loads((folder / MARKER).read_text())
    assert marker == {"source": "toy.tar.gz", "sha256": sha256(mirror / "toy.tar.gz"), "files": 3,
                      "listing": datasets.listing_digest(folder)}
    assert leftovers(root) == ["toy"]


def test_second_call_does_not_extract(root, mirror, monkeypatch):
    prepare("toy", root=root, mirror=mirror)
    monkeypatch.setattr(datasets, "_extract", lambda *args: pytest.fail("extracted again"))
    assert prepare("toy", root=root, mirror=mirror) == root / "toy"


def test_reextracts_deleted_folder(root, mirror):
    folder = prepare("toy", root=root, mirror=mirror)
    datasets.shutil.rmtree(folder)
    prepare("toy", root=root, mirror=mirror)
    assert (folder / "test/a/3.txt").read_bytes() == b"three"


def test_reextracts_tampered_folder_and_keeps_the_old_one_aside(root, mirror, capsys):
    folder = prepare("toy", root=root, mirror=mirror)
    (folder / "train/a/1.txt").unlink()
    (folder / "my_notes.txt").write_text("a user's file")
    assert not datasets.is_prepared(folder)
    prepare("toy", root=root, mirror=mirror)
    assert (folder / "train/a/1.txt").read_bytes() == b"one"
    toy, aside = leftovers(root)
    assert toy == "toy" and aside.startswith("toy.replaced-")
    assert (root / aside / "my_notes.txt").read_text() == "a user's file"
    assert f"moved to {root / aside}" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_a_changed_file_is_noticed_though_the_count_is_the_same(root, mirror, change):
    folder = prepare("toy", root=root, mirror=mirror)
    path = folder / "train/b/2.txt"
    stat = path.stat()
    path.write_bytes(b"TWO" if change == "rewrite" else b"t")
    datasets.os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not datasets.is_prepared(folder)


def test_leftovers_of_a_killed_extraction_are_removed(root, mirror):
    (root / ".tmp-toy-abc123" / "extracted").mkdir(parents=True)
    prepare("toy", root=root, mirror=mirror)
    assert leftovers(root) == ["toy"]


def test_a_marker_without_listing_is_upgraded_not_reextracted(root, mirror, monkeypatch):
    folder = prepare("toy", root=root, mirror=mirror)
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != "listing"}))
    monkeypatch.setattr(datasets, "_extract", lambda *args: pytest.fail("extracted again"))
    assert datasets._prepare("toy", root, mirror) == (folder, "ready")
    assert datasets.is_prepared(folder)


def test_checksum_mismatch(root, mirror):
    write_sums(mirror, {"toy.tar.gz": "0" * 64})
    with pytest.raises(DataError, match=f"toy.tar.gz: expected {'0' * 64}, got {sha256(mirror / 'toy.tar.gz')}"):
        prepare("toy", root=root, mirror=mirror)
    assert leftovers(root) == []


def test_truncated_archive(root, mirror):
    archive = mirror / "toy.tar.gz"
    archive.write_bytes(archive.read_bytes()[:60])
    write_sums(mirror, {"toy.tar.gz": sha256(archive)})
    with pytest.raises(DataError, match="cannot extract .*toy.tar.gz"):
        prepare("toy", root=root, mirror=mirror)
    assert leftovers(root) == []


def test_unsafe_member_is_refused(root, mirror):
    write_tar(mirror / "toy.tar.gz", {**FILES, "toy/../../evil.txt": b"x"})
    write_sums(mirror, {"toy.tar.gz": sha256(mirror / "toy.tar.gz")})
    with pytest.raises(DataError, match="cannot extract"):
        prepare("toy", root=root, mirror=mirror)
    assert leftovers(root) == []
    assert not (root.parent / "evil.txt").exists()


def test_unknown_dataset(root, mirror):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        prepare("nope", root=root, mirror=mirror)


def test_kaggle_message(root, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(DataError, match="missing: the kaggle package and credentials. pip install kaggle, then set "
                                        "KAGGLE_USERNAME and KAGGLE_KEY"):
        prepare("doom_crossing", root=root, mirror=tmp_path)
    assert leftovers(root) == []


def test_kaggle_found_inside_the_virtual_environment(root, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.shutil, "which", lambda name, path=None: path and f"{path}/{name}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    called = []
    monkeypatch.setattr(datasets.subprocess, "run", lambda command, check: called.append(command[0]) or
                        pytest.fail("stop after the call"))
    with pytest.raises(pytest.fail.Exception):
        prepare("doom_crossing", root=root, mirror=tmp_path)
    assert called == [str(datasets.Path(datasets.sys.executable).parent / "kaggle")]


def test_mirror_only_dataset_message(root, tmp_path):
    with pytest.raises(DataError, match="scene15 has no public download.*set DATA_MIRROR"):
        prepare("scene15", root=root, mirror=tmp_path)


@pytest.fixture
def online_toy(tmp_path, monkeypatch):
    """A zip "download", served from a local file instead of the network."""
    served = tmp_path / "served.zip"
    with zipfile.ZipFile(served, "w") as archive:
        for name, data in FILES.items():
            archive.writestr(name, data)
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    url = "https://example.invalid/toy.zip"
    monkeypatch.setitem(DATASETS, "toy", Dataset(online=Archive(url, top="toy", checksum=f"md5:{md5}")))
    monkeypatch.setattr(datasets, "_download", lambda url, path: path.write_bytes(served.read_bytes()))
    return url


def test_download_with_checksum(root, tmp_path, online_toy):
    folder, status = datasets._prepare("toy", root, tmp_path)
    assert status == "downloaded"
    assert (folder / "train/a/1.txt").read_bytes() == b"one"
    assert json.loads((folder / MARKER).read_text())["source"] == online_toy
    assert leftovers(root) == ["toy"]


def test_download_with_wrong_checksum(root, tmp_path, online_toy):
    DATASETS["toy"] = Dataset(online=Archive(online_toy, top="toy", checksum="md5:" + "0" * 32))
    with pytest.raises(DataError, match="md5 mismatch for .*toy.zip"):
        prepare("toy", root=root, mirror=tmp_path)
    assert leftovers(root) == []


def test_download_checks_file_count(root, tmp_path, online_toy, capsys):
    DATASETS["toy"] = Dataset(online=Archive(online_toy, top="toy", files=4))
    with pytest.raises(DataError, match="holds 3 files under toy/, expected 4"):
        prepare("toy", root=root, mirror=tmp_path)
    assert "toy.zip: sha256 " in capsys.readouterr().out
    assert leftovers(root) == []


def test_folder_filled_by_hand_is_adopted_when_no_source(root, tmp_path):
    (root / "tale").mkdir(parents=True)
    (root / "tale" / "labels.npy").write_bytes(b"x")
    assert datasets._prepare("tale", root, tmp_path) == (root / "tale", "adopted")
    assert datasets.is_prepared(root / "tale")


def test_cli(root, mirror, capsys):
    assert datasets.main(["toy", "nope"], root=root, mirror=mirror) == 1
    assert datasets.main(["toy"], root=root, mirror=mirror) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "toy: extracted"
    assert lines[1].startswith("nope: skipped (unknown dataset")
    assert lines[2] == "toy: ready"


def test_registry_matches_real_mirror():
    mirror = datasets.find_mirror()
    if mirror is None:
        pytest.skip("no offline data mirror")
    archives = {dataset.mirror.file for dataset in DATASETS.values() if dataset.mirror}
    assert archives == set(datasets.read_sha256sums(mirror))
