"""Tier 1: path normalization — what authorization, routing and the upstream all see."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.paths import BadTarget, normalize_path, normalize_target, valid_authority


@pytest.mark.parametrize("raw,path,query", [
    ("/", "/", ""),
    ("/a/b?x=1&y", "/a/b", "x=1&y"),
    ("/admin#frag", "/admin", ""),                      # CVE-2021-39156
    ("/admin#/../public", "/admin", ""),
    ("/public/..%2Fadmin", "/admin", ""),               # CVE-2021-31920
    ("/public/..%2fadmin", "/admin", ""),
    ("/public%5C..%5Cadmin", "/admin", ""),
    ("/public\\..\\admin", "/admin", ""),
    ("//admin", "/admin", ""),
    ("/a///b//c", "/a/b/c", ""),
    ("/a/./b/../c", "/a/c", ""),
    ("/a/b/..", "/a/", ""),
    ("/../../etc", "/etc", ""),
    ("/%61dmin", "/admin", ""),                         # unreserved escapes decoded
    ("/a%20b", "/a%20b", ""),                           # others kept, upper-cased
    ("/a%3fb?q", "/a%3Fb", "q"),
    ("/a?b#c", "/a", "b"),
    ("*", "*", ""),
    ("http://example.com/x/../y?z", "/y", "z"),
])
def test_normalization(raw, path, query):
    t = normalize_target(raw)
    assert (t.path, t.query) == (path, query)


@pytest.mark.parametrize("raw", ["/a%2", "/a%zz", "/a%", "relative/path", "/a\x00b", "/a b"])
def test_bad_targets_are_refused(raw):
    with pytest.raises(BadTarget):
        normalize_target(raw)


_segment = st.sampled_from(["a", "b", ".", "..", "", "%2F", "%2f", "%5C", "\\", "%41", "x%20y"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_segment, max_size=8))
def test_normal_form_is_stable_and_clean(segments):
    path = normalize_path("/" + "/".join(segments))
    assert path.startswith("/")
    assert normalize_path(path) == path                 # idempotent
    assert "//" not in path and "\\" not in path
    assert "%2F" not in path.upper() and "%5C" not in path.upper()
    assert "/./" not in path + "/" and "/../" not in path + "/"


@pytest.mark.parametrize("authority", ["web.demo", "web.demo:8080", "WEB.Demo", "web.demo.",
                                       "10.0.0.1:80", "[::1]", "[2001:db8::1]:443",
                                       "[::ffff:10.0.0.1]:80", "a-b_c~d%41", "web.demo:"])
def test_well_formed_hosts_are_accepted(authority):
    assert valid_authority(authority)


@pytest.mark.parametrize("authority", ["web.demo:80:80", "[web.demo]:80", "[::1", "web demo",
                                       "web.demo\t", "web.demo/x", "user@web.demo",
                                       "web.demo:8o", "web.demo#x"])
def test_malformed_hosts_are_refused(authority):
    assert not valid_authority(authority)
