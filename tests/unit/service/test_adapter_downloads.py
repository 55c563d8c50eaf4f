"""Which URLs a download may fetch: only under the admin's allowlisted sources."""

import pytest

from service.adapters.downloads import allowlisted, check_sha256, download_url, file_name_of
from service.errors import InvalidArgumentError

SOURCES = {"hub": "https://huggingface.co", "cdn": "https://cdn.example.org/lfs"}


def test_a_path_under_a_named_source_becomes_its_url_quoted():
    url = download_url(SOURCES, "hub", "org/my lora/resolve/main/lora.tar.gz")
    assert url == "https://huggingface.co/org/my%20lora/resolve/main/lora.tar.gz"
    assert file_name_of("org/my lora/resolve/main/lora.tar.gz") == "lora.tar.gz"


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "a/../../b.tar", "./a.tar", "a//b.tar", "a.tar?x=1", "a.tar#f",
     "a%2F..%2Fb.tar", "a\\b.tar", "a\x00.tar", "a\nb.tar", "x" * 1025],
)  # fmt: skip
def test_a_path_that_is_not_plain_and_relative_is_refused_by_name(path):
    with pytest.raises(InvalidArgumentError, match=r"^download\.path: "):
        download_url(SOURCES, "hub", path)


def test_a_source_off_the_allowlist_is_refused_naming_the_allowed_ones():
    with pytest.raises(InvalidArgumentError) as caught:
        download_url(SOURCES, "https://evil.example", "a.tar")
    assert str(caught.value) == (
        "download.source: 'https://evil.example' is not an allowlisted source (cdn, hub)"
    )
    with pytest.raises(InvalidArgumentError, match=r"none: --import-urls is empty"):
        download_url({}, "hub", "a.tar")


def test_redirects_are_allowed_only_under_a_source_not_beside_it():
    assert allowlisted("https://cdn.example.org/lfs/ab/cd", SOURCES)
    assert not allowlisted("https://cdn.example.org/lfs-other/ab", SOURCES)
    assert not allowlisted("https://cdn.example.org/", SOURCES)
    assert not allowlisted("https://huggingface.co.evil.example/x", SOURCES)
    assert not allowlisted("http://huggingface.co/x", SOURCES)
    # What a server would resolve out of the source's path after the prefix matched.
    assert not allowlisted("https://cdn.example.org/lfs/../admin/x", SOURCES)
    assert not allowlisted("https://cdn.example.org/lfs/a/./b", SOURCES)
    assert not allowlisted("https://cdn.example.org/lfs/%2e%2e/admin", SOURCES)
    assert not allowlisted("https://cdn.example.org/lfs/a%2Fb", SOURCES)


def test_a_sha256_is_64_hex_digits_or_none():
    check_sha256("")
    check_sha256("aB" * 32)
    with pytest.raises(InvalidArgumentError, match=r"^download\.sha256: 'xyz' is not 64 hex"):
        check_sha256("xyz")
