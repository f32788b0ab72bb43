"""The path policy (gateway.files.paths): what a client may name, and where."""
import pytest

from gateway.errors import BadRequest, Forbidden
from gateway.files import paths


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/../b", "a/..", "/home/u/../v", "~/../x",
                                 "a\x00b", "a\nb", "a\rb", "a\tb", "\x1b[0m", "a\x7f", "a\x85b",
                                 "x" * 4097, "a/" + "y" * 256])
def test_text_refusals(bad):
    with pytest.raises(BadRequest):
        paths.check_text(bad)


@pytest.mark.parametrize("ok", ["a", "/a/b", "a b", "-rf", "$(id)", "`id`", "a;b", "ünï", "...", "..a", "a..",
                                "~", "~/x", ".hidden", "%2e%2e"])
def test_text_allowed(ok):
    assert paths.check_text(ok) == ok


def test_normalize():
    assert paths.normalize("//a///b/./c/") == "/a/b/c"
    assert paths.normalize("/") == "/"
    assert paths.normalize("./x") == "x"
    assert paths.normalize(".") == "."


def test_join_relative_home_and_absolute():
    assert paths.join("/base", "x/y", "/home/u") == "/base/x/y"
    assert paths.join("/base", ".", "/home/u") == "/base"
    assert paths.join("/base", "~", "/home/u") == "/home/u"
    assert paths.join("/base", "~/d/f", "/home/u") == "/home/u/d/f"
    assert paths.join("/base", "/abs//p/", "/home/u") == "/abs/p"
    with pytest.raises(BadRequest):
        paths.join("/base", "~root/x", "/home/u")
    with pytest.raises(Forbidden):
        paths.join("/base", "~/x", None)


def test_inside():
    assert paths.inside("/home/u", "/home/u")
    assert paths.inside("/home/u/x", "/home/u")
    assert not paths.inside("/home/user2", "/home/u")      # a prefix is not a parent
    assert not paths.inside("/home", "/home/u")
    assert paths.inside("/anything", "/")


def test_expand_roots():
    assert paths.expand_roots(["{home}", "/scratch/{user}", "/shared"], "alice", "/home/alice") == [
        "/home/alice", "/scratch/alice", "/shared"]
    # No home: {home} roots are left out; a user name unfit for a path drops {user} roots.
    assert paths.expand_roots(["{home}", "/scratch/{user}"], "alice", None) == ["/scratch/alice"]
    assert paths.expand_roots(["/scratch/{user}"], "../root", "/h") == []
    assert paths.expand_roots(["{home}/data", "{home}"], "u", "/home/u/") == ["/home/u/data", "/home/u"]


def test_refuse_outside_names_the_roots():
    with pytest.raises(Forbidden, match="outside your file space"):
        paths.refuse_outside("/etc/passwd", ["/home/u"])
    with pytest.raises(Forbidden, match="no file space"):
        paths.refuse_outside("/home/u", [])
    paths.refuse_outside("/home/u/x", ["/tmp", "/home/u"])


def test_refuse_outside_shows_where_a_relative_path_leads():
    """'.' with ?jobId= is the job's work dir: the refusal names it, not only '.'."""
    with pytest.raises(Forbidden) as e:
        paths.refuse_outside("/scratch/job7", ["/home/u"], ".")
    assert e.value.msg == "'.' (/scratch/job7) is outside your file space (/home/u)"
    with pytest.raises(Forbidden) as e:
        paths.refuse_outside("/etc", ["/home/u"], "/etc")
    assert e.value.msg == "'/etc' is outside your file space (/home/u)"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\x00"])
def test_check_name(bad):
    with pytest.raises(BadRequest):
        paths.check_name(bad)


def test_user_names():
    assert paths.valid_user_name("gw.alice-1_x")
    for bad in ("", "-rf", "../x", "a b", "a/b", "x" * 65):
        assert not paths.valid_user_name(bad)
