import itertools
import json

import numpy as np
import pytest

from bitnas.cli import main
from bitnas.errors import SpaceError
from bitnas.space import Candidate, Gene, SearchSpace
from bitnas.supernets import get_space


def tiny_space() -> SearchSpace:
    bits = ((32, 32), (8, 8))
    return SearchSpace("t", [
        Gene("depth", (1, 2, 3)),
        Gene("k0", (3, 5)),
        Gene("k1", (3, 5, 7), active_if=("depth", 2)),
        Gene("k2", (3, 5), active_if=("depth", 3)),
        Gene("p0", bits, "policy"),
        Gene("p1", bits, "policy", ("depth", 2)),
        Gene("p2", bits, "policy", ("depth", 3)),
        Gene("width", (8, 16)),
    ])


def brute_force_distinct(space: SearchSpace) -> int:
    seen = set()
    for combo in itertools.product(*[g.options for g in space.genes]):
        values = dict(zip([g.name for g in space.genes], combo))
        seen.add(space._candidate(values).id)
    return len(seen)


def test_cardinality_matches_brute_force_enumeration():
    sp = tiny_space()
    card = sp.cardinality()
    assert card["joint_cardinality"] == brute_force_distinct(sp)
    # depth 1: 2*2, depth 2: 2*2*3*2, depth 3: 2*2*3*2*2*2 ; times width 2
    assert card["joint_cardinality"] == (4 + 24 + 96) * 2
    assert card["arch_cardinality"] == (2 + 6 + 12) * 2
    assert card["policy_cardinality"] == 8


def test_mbv2_tiny_cardinality_from_its_definition():
    card = get_space("mbv2-tiny").cardinality()
    per_block_arch, per_block_joint = 3 * 3, 3 * 3 * 2**3
    stage_arch = 2 * sum(per_block_arch**d for d in (1, 2, 3))
    stage_joint = 2 * sum(per_block_joint**d for d in (1, 2, 3))
    assert card["arch_cardinality"] == stage_arch**3
    assert card["joint_cardinality"] == stage_joint**3 * 2**3  # stem, head, classifier bits
    assert card["policy_cardinality"] == 2 ** (3 + 3 * 3 * 3)


def test_inactive_genes_are_canonical_so_equal_candidates_share_an_id():
    sp = tiny_space()
    a = sp._candidate({"depth": 1, "k0": 3, "k1": 7, "k2": 5, "p0": (8, 8), "p1": (8, 8), "p2": (8, 8), "width": 8})
    b = sp._candidate({"depth": 1, "k0": 3, "k1": 3, "k2": 3, "p0": (8, 8), "p1": (32, 32), "p2": (32, 32),
                       "width": 8})
    assert a.id == b.id
    c = sp._candidate({"depth": 2, "k0": 3, "k1": 7, "k2": 5, "p0": (8, 8), "p1": (8, 8), "p2": (8, 8), "width": 8})
    assert c.id != a.id


def test_encode_decode_round_trip_both_encodings():
    sp = get_space("mbv2-tiny")
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = sp.sample(rng)
        assert sp.decode(sp.encode(c)) == c
        oh = sp.encode(c, "onehot")
        assert oh.shape == (sp.onehot_size,) and oh.sum() == sp.n_genes
        assert sp.decode(oh, "onehot") == c


def test_candidate_id_is_stable_and_survives_json():
    sp = get_space("mbv2-tiny")
    c = sp.largest()
    again = Candidate.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.id == c.id
    assert len(c.id) == 16


def test_mutation_and_crossover_stay_in_the_space():
    sp = get_space("mbv2-tiny")
    rng = np.random.default_rng(1)
    a, b = sp.sample(rng), sp.sample(rng)
    for _ in range(20):
        m = sp.mutate(a, rng, 0.3)
        x = sp.crossover(a, b, rng)
        assert sp.validate(m) == m and sp.validate(x) == x


def test_validate_names_the_gene_at_fault():
    sp = get_space("mbv2-tiny")
    c = sp.largest()
    bad = Candidate.make({**c.arch_dict, "s0.b0.kernel": 4}, c.policy_dict)
    with pytest.raises(SpaceError, match="s0.b0.kernel"):
        sp.validate(bad)
    extra = Candidate.make({**c.arch_dict, "s9.depth": 1}, c.policy_dict)
    with pytest.raises(SpaceError, match="s9.depth"):
        sp.validate(extra)


def test_unknown_space_is_a_clear_error():
    with pytest.raises(SpaceError, match="unknown search space 'nope'"):
        get_space("nope")


def test_profiling_a_space_without_a_measurable_supernet_says_why(capsys, tmp_path):
    """Any family's space can be profiled; a search-only paper space and an unknown space are refused."""
    out = tmp_path / "l.json"
    assert main(["profile", "--target", "ort-cpu", "--space", "apq-mbv2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'apq-mbv2' is a paper-scale space for search only" in err and "mbv2-tiny" in err
    assert main(["profile", "--target", "ort-cpu", "--space", "nope", "--out", str(out)]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_space_info_json(capsys):
    assert main(["space", "info", "mbv2-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("arch_cardinality", "policy_cardinality", "joint_cardinality", "log10_joint", "choices"):
        assert key in info
    assert info["joint_cardinality"] == get_space("mbv2-tiny").cardinality()["joint_cardinality"]
    assert {c["name"] for c in info["choices"]} >= {"stem", "s0.depth", "s0.b0.kernel", "classifier"}


def test_cli_unknown_space_exits_2(capsys):
    assert main(["space", "info", "nope"]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err
