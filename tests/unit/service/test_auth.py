import json

import pytest

from service.auth import Principal, Role, TokenTable
from service.errors import ConfigError, UnauthenticatedError

ADMIN = "a" * 20
USER = "u" * 20


def table() -> TokenTable:
    entries = [
        {"token": ADMIN, "tenant": "ops", "role": "admin"},
        {"token": USER, "tenant": "acme", "role": "user"},
    ]
    return TokenTable.parse(json.dumps(entries), "tokens.json")


def test_bearer_token_maps_to_its_principal():
    assert table().authenticate(f"Bearer {USER}") == Principal("acme", Role.USER)
    assert table().authenticate(f"bearer {ADMIN}") == Principal("ops", Role.ADMIN)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        (USER, "must be 'Bearer <token>'"),
        ("Basic abc", "must be 'Bearer <token>'"),
        ("Bearer " + "x" * 20, "unknown bearer token"),
    ],
)
def test_bad_credentials_are_unauthenticated(value, reason):
    with pytest.raises(UnauthenticatedError, match=reason):
        table().authenticate(value)


def test_yaml_is_accepted():
    text = f"- token: {USER}\n  tenant: acme\n  role: user\n"
    assert TokenTable.parse(text, "t.yaml").authenticate(f"Bearer {USER}").tenant == "acme"


def test_file_problems_name_entry_and_field():
    text = json.dumps(
        [
            {"token": "short", "tenant": "acme", "role": "user"},
            {"token": USER, "tenant": "Bad Tenant", "role": "root"},
        ]
    )
    with pytest.raises(ConfigError) as caught:
        TokenTable.parse(text, "tokens.json")
    message = str(caught.value)
    assert message.startswith("--auth-tokens-file tokens.json:")
    assert "[0.token]" in message
    assert "[1.tenant]" in message
    assert "[1.role]" in message


def test_duplicate_and_empty_files_are_refused(tmp_path):
    entry = {"token": USER, "tenant": "acme", "role": "user"}
    with pytest.raises(ConfigError, match=r"\[1\]\.token is a duplicate"):
        TokenTable.parse(json.dumps([entry, entry]), "t")
    with pytest.raises(ConfigError, match="lists no tokens"):
        TokenTable.parse("[]", "t")
    with pytest.raises(ConfigError, match="No such file"):
        TokenTable.load(tmp_path / "missing.json")


def test_no_token_may_belong_to_the_shared_tenant():
    entry = {"token": USER, "tenant": "shared", "role": "admin"}
    with pytest.raises(ConfigError, match=r"\[0.tenant\]: .*'shared' is reserved"):
        TokenTable.parse(json.dumps([entry]), "t")
