"""--netfilter-bug-1766-fix: true, false, or auto (the default): on unless the kernel's release says 6.12 or later."""

from __future__ import annotations

import argparse
import os

import pytest

from kube_netpol.agent.config import add_agent_arguments, bug_1766_fix_of, config_from_args
from kube_netpol.dataplane.kernel_release import fixes_bug_1766, kernel_version


def parse_args(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return parser.parse_args(list(args))


@pytest.mark.parametrize(("release", "version", "fixed"), [
    ("6.12.0", (6, 12), True),
    ("6.12.0-rc1", (6, 12), True),
    ("6.18.44-fc-v1272", (6, 18), True),
    ("7.0.1-arch1-1", (7, 0), True),
    ("6.11.11-200.fc40.x86_64", (6, 11), False),
    ("6.1.0-28-amd64", (6, 1), False),  # Debian 12: may carry a backport; a release string cannot tell
    ("5.15.0-1050-azure", (5, 15), False),
    ("4.19.0", (4, 19), False),
    (" 6.13.2\n", (6, 13), True),
    ("", None, False),
    ("linux", None, False),
    ("v6.12", None, False),  # not how a release starts: unknown, so not known to be fixed
])
def test_the_kernel_release_says_whether_the_bug_is_fixed(release: str, version: tuple[int, int] | None, fixed: bool) -> None:
    assert kernel_version(release) == version
    assert fixes_bug_1766(release) is fixed


@pytest.mark.parametrize(("release", "expected"), [("6.12.3", False), ("6.11.0", True), ("6.1.0-28-amd64", True), ("?", True)])
def test_auto_is_the_default_and_follows_the_kernel(release: str, expected: bool) -> None:
    for args in (parse_args(), parse_args("--netfilter-bug-1766-fix=auto"), parse_args("--netfilter-bug-1766-fix=AUTO")):
        assert args.netfilter_bug_1766_fix is None
        assert bug_1766_fix_of(args, release) is expected


@pytest.mark.parametrize(("flags", "expected"), [
    (("--netfilter-bug-1766-fix",), True),
    (("--netfilter-bug-1766-fix=true",), True),
    (("--netfilter-bug-1766-fix", "false"), False),
    (("--netfilter-bug-1766-fix=0",), False),
])
def test_a_given_value_wins_over_the_kernel(flags: tuple[str, ...], expected: bool) -> None:
    args = parse_args(*flags)
    for release in ("6.1.0", "6.18.0", "?"):
        assert bug_1766_fix_of(args, release) is expected
    assert config_from_args(args).netfilter_bug_1766_fix is expected


def test_the_agent_config_resolves_auto_with_this_node_kernel() -> None:
    assert config_from_args(parse_args()).netfilter_bug_1766_fix is not fixes_bug_1766(os.uname().release)


def test_an_invalid_value_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args("--netfilter-bug-1766-fix=maybe")
    assert "invalid value 'maybe' (use true, false or auto)" in capsys.readouterr().err
