"""Typed method options, one spec for training and on-device methods."""
import pytest
from click.testing import CliRunner

from edgeda.errors import EdgedaError
from edgeda.options import Configurable


class Probe(Configurable):
    name = "probe"
    defaults = {"on": True, "n": 3, "w": 0.5, "mode": "a", "free": None}
    choices = {"mode": ("a", "b")}
    option_help = {"mode": "which variant"}


def test_values_take_the_type_of_their_default():
    o = Probe.resolve_options({"on": "false", "n": "4", "w": "2", "mode": "b", "free": [1]})
    assert o == {"on": False, "n": 4, "w": 2.0, "mode": "b", "free": [1]}
    assert Probe.resolve_options({"on": 1, "n": 5.0})["on"] is True


@pytest.mark.parametrize("bad,match", [({"on": "maybe"}, "not a valid bool"), ({"n": 2.5}, "not a valid int"),
                                       ({"w": "x"}, "not a valid float"), ({"mode": "c"}, "valid: a, b"),
                                       ({"nope": 1}, "has no option nope; valid: free, mode, n, on, w")])
def test_bad_values_name_what_is_valid(bad, match):
    with pytest.raises(EdgedaError, match=match):
        Probe.resolve_options(bad)


def test_every_registered_method_resolves_its_own_defaults():
    from edgeda.adapt import ADAPT_METHODS
    from edgeda.methods import METHODS

    for reg in (METHODS, ADAPT_METHODS):
        for name, cls in reg.items():
            assert cls.resolve_options({}) == cls.defaults, name
            assert [s["name"] for s in cls.option_specs()] == list(cls.defaults), name


def test_methods_command_shows_one_methods_options():
    from edgeda.cli import main

    out = CliRunner().invoke(main, ["methods", "mmd"]).output
    assert "layers = 'features+logits' (str) [features | logits | features+logits]" in out
    r = CliRunner().invoke(main, ["methods", "tent"])
    assert r.exit_code == 0 and "edgeda adapt --method tent" in r.output
    r = CliRunner().invoke(main, ["methods", "nosuch"])
    assert r.exit_code == 2 and "on-device methods" in r.output


def test_an_unknown_optimizer_is_named_with_where_it_came_from():
    from edgeda.methods import METHODS, OptimConfig
    from edgeda.tasks.spec import TaskSpec

    spec = TaskSpec(10, [str(i) for i in range(10)])
    with pytest.raises(EdgedaError, match="unknown optimizer 'adamw' \\(the config's `optimizer`\\); valid: adam, sgd"):
        METHODS.get("source_only")(spec, backbone_kwargs={"width": 8, "out_dim": 32}, optim=OptimConfig("adamw"))
