import pytest

from spider.errors import RegistryError
from spider.registry import Registry


def test_register_get_list_and_meta():
    reg = Registry("widget")

    @reg.register("alpha", colour="red")
    def alpha():
        return 1

    reg.add("beta", lambda: 2)
    assert reg.get("alpha") is alpha
    assert reg.list() == ["alpha", "beta"]
    assert reg.list("a*") == ["alpha"]
    assert reg.meta("alpha") == {"colour": "red"}
    assert "beta" in reg and len(reg) == 2


def test_unknown_and_duplicate_names_are_rejected():
    reg = Registry("widget")
    reg.add("alpha", object())
    with pytest.raises(RegistryError, match="unknown widget 'gamma'; available: alpha"):
        reg.get("gamma")
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("alpha", object())
