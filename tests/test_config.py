import pytest

from bitnas.cli import main
from bitnas.config import load_config
from bitnas.errors import ConfigError
from bitnas.project import ProjectConfig


def test_defaults_load_from_an_empty_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    assert load_config(ProjectConfig, p) == ProjectConfig()


def test_nested_values_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\nsearch:\n  budget: 40\n  objectives: [accuracy, latency_ms]\n"
                 "compile:\n  passes: [ExtractSubnet, {Qaft: {epochs: 2}}]\n")
    cfg = load_config(ProjectConfig, p)
    assert cfg.seed == 3 and cfg.search.budget == 40 and cfg.search.objectives == ("accuracy", "latency_ms")
    assert cfg.compile.passes == ("ExtractSubnet", {"Qaft": {"epochs": 2}})


def test_unknown_key_is_one_error_naming_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("search:\n  budgett: 10\n  pop_size: nope\n")
    with pytest.raises(ConfigError) as info:
        load_config(ProjectConfig, p)
    msg = str(info.value)
    assert str(p) in msg and "search.budgett" in msg
    assert msg.count("\n") == 0


def test_wrong_type_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("lut:\n  repeats: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'lut.repeats'"):
        load_config(ProjectConfig, p)


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ProjectConfig, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ProjectConfig, tmp_path / "missing.yaml")
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(ProjectConfig, p)


def test_cli_demo_with_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("unknown_section: 1\n")
    out = tmp_path / "out"
    assert main(["demo", "--config", str(p), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'unknown_section'" in err and str(p) in err
    assert not out.exists()
