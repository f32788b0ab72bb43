import pytest

from .samples import CAPTURED


@pytest.fixture
def now():
    return CAPTURED
