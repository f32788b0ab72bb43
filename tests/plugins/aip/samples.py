import pathlib
from datetime import datetime, timezone


FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# The samples were captured on Sun Nov 22 01:05:23 UTC 2026.
CAPTURED = datetime(2026, 11, 22, 1, 5, 23, tzinfo=timezone.utc)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_text(name: str) -> str:
    return fixture_bytes(name).decode("utf-8", "replace")


def ol(name: str) -> str:
    """A verbatim OpenLava 2.2 sample (tests/plugins/aip/fixtures/openlava-2.2/)."""
    return fixture_text(f"openlava-2.2/{name}")


