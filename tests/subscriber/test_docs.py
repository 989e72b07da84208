"""The subscriber documentation stays true: every setting with its default is
in docs/subscriber.md, and every error code, close code and message type of
the protocol module is in the README's protocol section (the one a client in
another language is written from)."""

from __future__ import annotations

from pathlib import Path

from pricepipe.subscriber.client.settings import SETTINGS as CLIENT_SETTINGS
from pricepipe.subscriber.ws import protocol as p
from pricepipe.subscriber.ws.settings import SETTINGS as WS_SETTINGS

SETTINGS = (*WS_SETTINGS, *CLIENT_SETTINGS)

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "subscriber.md").read_text()
PROTOCOL = (ROOT / "README.md").read_text().split("## Websocket protocol", 1)[-1]


def test_every_setting_is_documented_with_its_default() -> None:
    for cls in SETTINGS:
        for name, default, help_text in cls.documentation():
            assert f"| `{name}` | `{default}` | {help_text} |" in DOC, name


def test_every_code_and_message_type_is_documented() -> None:
    # Error codes and unrecoverable reasons: the upper-case string constants.
    for name, value in vars(p).items():
        if name.isupper() and isinstance(value, str):
            assert f"`{value}`" in PROTOCOL, name
    for name, value in vars(p).items():
        if name.startswith("CLOSE_"):
            assert f"| {value} |" in PROTOCOL, name
    for kind in p.MESSAGE_TYPES:
        assert f'"type": "{kind}"' in PROTOCOL, kind
