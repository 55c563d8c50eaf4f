"""The safe extractor: what an archive may hold, and the caps."""

import io
import tarfile
import zipfile

import pytest

from service.archive import ArchiveError, ArchiveLimits, extract

LIMITS = ArchiveLimits(max_bytes=10_000, max_files=5)


def tar(path, members):
    """members: (name, bytes | None for a directory | ("symlink"|"hardlink"|"fifo", target))."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, tuple):
                kind, target = content
                info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                             "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}[kind]  # fmt: skip
                info.linkname = target
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


def test_a_plain_tree_extracts(tmp_path):
    path = tar(
        tmp_path / "t.tgz", [("tasks", None), ("tasks/a.yaml", b"task: a\n"), ("b.txt", b"x")]
    )
    extracted = extract(path, tmp_path / "out", LIMITS)
    assert (extracted.files, extracted.bytes) == (2, 9)
    assert (tmp_path / "out" / "tasks" / "a.yaml").read_text() == "task: a\n"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("/etc/passwd", b"x")], "an absolute name"),
        ([("../escape.yaml", b"x")], "'..' in a name"),
        ([("a/../../escape", b"x")], "'..' in a name"),
        ([("link", ("symlink", "/etc/passwd"))], "not a regular file or directory"),
        ([("hard", ("hardlink", "/etc/passwd"))], "not a regular file or directory"),
        ([("pipe", ("fifo", ""))], "not a regular file or directory"),
        ([("dev", ("device", ""))], "not a regular file or directory"),
        ([(f"f{i}", b"x") for i in range(6)], "more than 5 files"),
        ([("big", b"x" * 10_001)], "extracts to more than its cap"),
        ([("a", b"x" * 6000), ("b", b"x" * 6000)], "extracts to more than its cap"),
        ([("/".join(["d"] * 20) + "/f", b"x")], "deeper than 16"),
        ([("x" * 300, b"x")], "longer than 255 bytes"),
        ([("a", b"1"), ("a", b"2")], "'a': cannot be written"),
    ],
)  # fmt: skip
def test_unsafe_tar_members_refuse_the_whole_archive_and_leave_nothing(tmp_path, members, message):
    path = tar(tmp_path / "t.tgz", members)
    with pytest.raises(ArchiveError, match=message):
        extract(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escape.yaml").exists()


def test_a_zip_with_a_symlink_or_a_lying_size_is_refused(tmp_path):
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as archive:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16  # a symlink's mode
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'link': not a regular file"):
        extract(path, tmp_path / "out", LIMITS)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", b"\0" * 1_000_000)  # a few kB compressed
    with pytest.raises(ArchiveError, match="extracts to more than its cap"):
        extract(bomb, tmp_path / "out", LIMITS)
    garbage = tmp_path / "g.zip"
    garbage.write_bytes(b"PK not really")
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        extract(garbage, tmp_path / "out", LIMITS)
