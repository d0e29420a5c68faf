"""Typed method options, one spec for training and on-device methods."""
import copy
import json
import pickle

import pytest
from click.testing import CliRunner

from edgeda.errors import EdgedaError
from edgeda.options import Configurable, Options


class Probe(Configurable):
    name = "probe"
    defaults = {"on": True, "n": 3, "w": 0.5, "mode": "a", "free": None}
    choices = {"mode": ("a", "b")}
    option_help = {"mode": "which variant"}


def test_values_take_the_type_of_their_default():
    o = Probe.resolve_options({"on": "false", "n": "4", "w": "2", "mode": "b", "free": [1]})
    assert o == {"on": False, "n": 4, "w": 2.0, "mode": "b", "free": [1]}
    assert Probe.resolve_options({"on": 1, "n": 5.0})["on"] is True


def test_a_choice_parsed_as_a_boolean_is_the_choice_that_spells_it():
    """``--option flip=off`` and a config file's ``balance: on`` reach the method parsed as YAML booleans."""
    from edgeda.adapt import ADAPT_METHODS

    cotta = ADAPT_METHODS.get("cotta")
    o = cotta.resolve_options({"flip": False, "balance": True})
    assert (o.flip, o.balance) == ("off", "on")
    with pytest.raises(EdgedaError, match="option mode='True'; valid: a, b"):
        Probe.resolve_options({"mode": True})  # no choice spells a boolean


def test_registered_methods_are_named_in_their_errors():
    from edgeda.adapt import ADAPT_METHODS
    from edgeda.methods import METHODS

    assert METHODS.get("dann").name == "dann" and ADAPT_METHODS.get("tent").name == "tent"
    with pytest.raises(EdgedaError, match="adapt method 'tent' option balance='x'"):
        ADAPT_METHODS.get("tent").resolve_options({"balance": "x"})


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


def test_options_read_as_attributes_and_keys_typed_once():
    o = Probe.resolve_options({"n": "4", "w": "2"})
    assert isinstance(o, Options)
    assert o.n == o["n"] == 4 and type(o.n) is int and type(o.w) is float and o.on is True and o.free is None
    assert list(o) == list(Probe.defaults) and len(o) == len(Probe.defaults) and "mode" in o and "nope" not in o
    assert dict(o) == {"on": True, "n": 4, "w": 2.0, "mode": "a", "free": None}
    assert Options(dict(o), "x") == o and json.loads(json.dumps(dict(o))) == dict(o)
    assert copy.deepcopy(o) == o and pickle.loads(pickle.dumps(o)) == o
    assert getattr(o, "nope", "absent") == "absent" and o.get("nope", 7) == 7


def test_an_unknown_option_name_is_an_error_naming_the_valid_ones():
    o = Probe.resolve_options({})
    with pytest.raises(AttributeError, match="method 'probe' has no option 'lr'; valid: free, mode, n, on, w"):
        o.lr
    with pytest.raises(KeyError, match="has no option 'lr'; valid: free, mode, n, on, w"):
        o["lr"]


def test_options_are_read_only_and_replace_makes_a_copy():
    o = Probe.resolve_options({})
    with pytest.raises(AttributeError, match="read-only"):
        o.n = 5
    with pytest.raises(TypeError):
        o["n"] = 5
    p = o.replace(n=5)
    assert p.n == 5 and o.n == 3
    with pytest.raises(AttributeError, match="has no option 'nope'"):
        o.replace(nope=1)
    with pytest.raises(EdgedaError, match="option names items, keys are taken"):
        Options({"keys": 1, "items": 2, "lr": 3}, "method 'x'")


def _specs():
    from edgeda.tasks.spec import TaskSpec

    return {"classification": (TaskSpec(10, [str(i) for i in range(10)]), "dtn", {"width": 8, "out_dim": 32}),
            "segmentation": (TaskSpec(2, ["bg", "fg"], task="segmentation", image_size=(32, 32)), "lraspp", {"width": 0.25}),
            "depth": (TaskSpec(task="depth", image_size=(32, 32), depth_range=(0.1, 80.0)), "lraspp", {"width": 0.25}),
            "detection": (TaskSpec(2, ["a", "b"], task="detection", image_size=(64, 64)), "ssdlite", {"width": 0.25})}


def test_every_method_optimizer_records_initial_lr_on_every_param_group():
    """The LR schedule scales each group's ``initial_lr``: every optimizer of every registered method,
    training or on-device, comes from the one factory that records it."""
    from edgeda.adapt import ADAPT_METHODS
    from edgeda.methods import METHODS
    from edgeda.tasks import task_of

    specs = _specs()
    seen = {"train": 0, "adapt": 0}
    for name, cls in METHODS.items():
        for task in cls.tasks:
            spec, backbone, kwargs = specs[task]
            m = cls(spec, backbone=backbone, backbone_kwargs=kwargs)
            for opt_name, opt in m.optims.items():
                assert all("initial_lr" in g for g in opt.param_groups), (name, task, opt_name)
                seen["train"] += 1
    for name, cls in ADAPT_METHODS.items():
        for task in cls.tasks:
            spec, backbone, kwargs = specs[task]
            m = cls(task_of(spec).build_model(spec, backbone, kwargs), spec)
            for opt_name, opt in m.optims.items():
                assert all("initial_lr" in g and g["initial_lr"] == g["lr"] for g in opt.param_groups), (name, task, opt_name)
                seen["adapt"] += 1
    assert seen["train"] >= len(list(METHODS.items())) and seen["adapt"] >= len(list(ADAPT_METHODS.items()))


def test_the_lr_schedule_names_an_optimizer_without_initial_lr():
    import torch

    from edgeda.methods.base import build_optimizer, scheduled_lr

    w = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [w], "lr": 0.5}], "adam", 0.1, betas=(0.5, 0.999))
    assert opt.param_groups[0]["initial_lr"] == 0.5 and opt.defaults["betas"] == (0.5, 0.999)
    scheduled_lr("g", opt, 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    bare = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(EdgedaError, match="method 'x': optimizer 'disc' param group 0 has no initial_lr"):
        scheduled_lr("disc", bare, 0.5, "method 'x'")


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_fused_update_is_the_same_algorithm_as_torchs_default(name, monkeypatch):
    """build_optimizer's fused update (where torch has it) follows torch's per-parameter loop step
    for step, learning-rate groups, momentum / betas and weight decay included; it resumes from a
    state saved by either."""
    import torch

    import edgeda.methods.base as base

    torch.manual_seed(0)
    nets = {}
    for fused in (False, True):
        monkeypatch.setattr(base, "FUSED_OPTIMIZERS", fused)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        groups = [{"params": net[0].parameters(), "lr_mult": 0.1}, {"params": net[2].parameters()}]
        groups = [{**g, "lr": 0.05 * g.pop("lr_mult", 1.0)} for g in groups]
        opt = base.build_optimizer(groups, name, 0.05, momentum=0.9, weight_decay=5e-4)
        assert bool(opt.defaults.get("fused")) == fused
        nets[fused] = (net, opt)
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(6)]
    start = [p.detach().clone() for p in nets[False][0].parameters()]
    for x, y in data:
        for net, opt in nets.values():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    (a, opt_a), (b, opt_b) = nets[False], nets[True]
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all((p - p0).abs().max() > 1e-4 for p, p0 in zip(a.parameters(), start))  # the steps moved every tensor
    opt_b.load_state_dict(opt_a.state_dict())  # a checkpoint of the default loop resumes in a fused one
    x, y = data[0]
    opt_b.zero_grad()
    torch.nn.functional.cross_entropy(b(x), y).backward()
    opt_b.step()
    assert all(torch.isfinite(p).all() for p in b.parameters())


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_fused_update_takes_parameters_whose_first_gradient_comes_later(name, monkeypatch):
    """A network trained in part first (CSG's frozen encoder, a discriminator that joins later): torch's
    fused SGD fails when only some parameters have momentum buffers; build_optimizer's follows the loop."""
    import torch

    import edgeda.methods.base as base

    out = {}
    for fused in (False, True):
        monkeypatch.setattr(base, "FUSED_OPTIMIZERS", fused)
        torch.manual_seed(0)
        a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
        opt = base.build_optimizer([*a.parameters(), *b.parameters()], name, 0.1, momentum=0.9, weight_decay=5e-4)
        for i in range(4):
            opt.zero_grad(set_to_none=True)
            x = torch.randn(3, 4, generator=torch.Generator().manual_seed(i))
            h = a(x) if i >= 2 else a(x).detach()  # a gets its first gradient at step 2
            b(h).square().sum().backward()
            opt.step()
        out[fused] = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
    for p, q in zip(out[False], out[True]):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
