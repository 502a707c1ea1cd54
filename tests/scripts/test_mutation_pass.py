"""The mutation catalogue stays applicable: every mutation's snippet occurs exactly once in its file and the tests
it names exist, so an edit of the source that moves a snippet is seen here, not halfway through a pass."""

from __future__ import annotations

from scripts.mutation_pass import REPO, load_catalogue


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = load_catalogue()
    assert len(mutations) >= 40
    for m in mutations:
        source = (REPO / m["file"]).read_text()
        assert source.count(m["old"]) == 1, m["id"]
        assert m["new"] != m["old"], m["id"]
        for test in m["tests"]:
            if not test.startswith("-"):
                assert (REPO / test.split("::")[0]).exists(), (m["id"], test)
