"""README.md's "A first publish and subscribe": its three lines, run as
written with bash against a fresh moatd. Only the port changes (`-p PORT` is
added to each `moat` command: the test's moatd listens on a free port, not
1883), and `build/apps/moat/moat` is a link to the moat under test. The output
asserted is the one the README's own comment names."""

import os
import re
import subprocess

import pytest

from conftest import REPO
from test_cli import MOAT
from util import scaled

HEADING = "## A first publish and subscribe"
MOAT_IN_README = "build/apps/moat/moat"


def readme_block():
    """The first ```sh block after HEADING, as a list of lines."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    at = text.find("\n" + HEADING + "\n")
    assert at >= 0, "README.md has no heading %r: update this test with the README" % HEADING
    m = re.compile(r"\n```sh\n(.*?)\n```\n", re.S).search(text, at)
    nxt = text.find("\n## ", at + 1)
    assert m and (nxt < 0 or m.start() < nxt), \
        "no ```sh block under %r in README.md: update this test with the README" % HEADING
    return m.group(1).splitlines()


def test_readme_block_is_three_moat_lines():
    lines = readme_block()
    assert len(lines) == 3, lines
    assert [l.split()[0] for l in lines] == [MOAT_IN_README, MOAT_IN_README, "wait"], lines
    assert [l.split()[1] for l in lines[:2]] == ["sub", "pub"], lines


def test_readme_first_publish_and_subscribe(broker, tmp_path):
    if not (os.path.isfile(MOAT) and os.access(MOAT, os.X_OK)):
        pytest.skip("moat binary not found at %s (set MOAT)" % MOAT)
    lines = readme_block()
    # The README says what the subscriber prints, in the comment of its last line.
    said = re.search(r'# sub printed "([^"]+)"', "\n".join(lines))
    assert said, "README's block no longer says what sub printed:\n" + "\n".join(lines)
    expected = said.group(1)
    # Fresh broker per test (the README's topic is fixed and the message retained).
    assert broker.host == "127.0.0.1"  # moat's default host, localhost, reaches it
    script = []
    for line in lines:
        new, n = re.subn(r"(%s (?:sub|pub))( |$)" % re.escape(MOAT_IN_README),
                         r"\1 -p %d\2" % broker.port, line)
        assert n <= 1, line
        script.append(new)
    assert sum(MOAT_IN_README in l for l in script) == 2
    assert sum(("-p %d" % broker.port) in l for l in script) == 2, script
    os.makedirs(tmp_path / "build" / "apps" / "moat")
    os.symlink(os.path.abspath(MOAT), str(tmp_path / MOAT_IN_README))
    r = subprocess.run(["bash", "-e", "-c", "\n".join(script) + "\n"], cwd=str(tmp_path),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=scaled(30))
    assert r.returncode == 0, (script, r.stdout, r.stderr)
    assert r.stdout.decode() == expected + "\n", (script, r.stdout, r.stderr)
    assert r.stderr == b"", r.stderr
