"""What every store shares before it asks its database: the form of ids and page tokens."""

import pytest

from service.errors import InvalidArgumentError
from service.store.base import could_be_issued, page_cursor


@pytest.mark.parametrize(
    ("text", "issued"),
    [("job-0123abcd", True), ("chatcmpl-ff", True), ("", False), ("a\x00b", False),
     ("é", False), ("x" * 129, False), ("tab\there", False)],
)  # fmt: skip
def test_only_printable_ascii_ids_of_bounded_length_are_looked_up(text, issued):
    assert could_be_issued(text) is issued


def test_a_page_token_is_a_cursor_we_issued():
    assert (page_cursor(""), page_cursor("12")) == (0, 12)
    for bad in ("-1", "9" * 19, "\u00b2", "x"):
        with pytest.raises(InvalidArgumentError, match=r"page_token: .* is not a token we issued"):
            page_cursor(bad)
