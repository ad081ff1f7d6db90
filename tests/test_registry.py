"""The Registry: building, context passing and the errors a user sees."""
import sys

import pytest

import lttoolbox
from lttoolbox.errors import ConfigError
from lttoolbox.registry import Registry, describe, recipe_parameters


@pytest.fixture()
def toys():
    reg = Registry("toy")

    @reg.register("ball")
    class Ball:
        def __init__(self, size=1.0, num_classes=None):
            if size <= 0:
                raise ConfigError(f"size must be positive, got {size}")
            self.size, self.num_classes = size, num_classes

    @reg.register("kite")
    def kite(length=2):
        return ("kite", length)

    return reg


def test_build_passes_params_and_only_named_context(toys):
    ball = toys.build({"name": "ball", "size": 3.0}, num_classes=7, class_counts=[1, 2])
    assert (ball.size, ball.num_classes) == (3.0, 7)
    assert toys.build("kite", num_classes=3) == ("kite", 2)
    assert toys.names() == ["ball", "kite"]


def test_recipe_value_wins_over_context(toys):
    assert toys.build({"name": "ball", "num_classes": 4}, num_classes=7).num_classes == 4


def test_unknown_name_lists_names_and_suggests(toys):
    with pytest.raises(ConfigError) as err:
        toys.build({"name": "bal"})
    message = str(err.value)
    assert message.startswith("toy.name:")
    assert "did you mean 'ball'" in message and "ball, kite" in message


def test_unknown_parameter_is_never_ignored(toys):
    with pytest.raises(ConfigError) as err:
        toys.build({"name": "ball", "sise": 2}, key="loss")
    assert str(err.value).startswith("loss.sise:")
    assert "did you mean 'size'" in str(err.value)


def test_entry_value_errors_carry_the_full_key(toys):
    with pytest.raises(ConfigError, match=r"^toy.size: must be positive, got -1$"):
        toys.build({"name": "ball", "size": -1})
    with pytest.raises(ConfigError, match=r"^phases\[1\].toy.size: must be positive"):
        toys.build({"name": "ball", "size": -1}, key="phases[1].toy")

    @toys.register("net")
    class Net:
        def __init__(self, kernel=3, mode="a", inner=None, num_classes=None):
            if kernel % 2 == 0:  # a key relative to the entry
                raise ConfigError(f"must be odd, got {kernel}", key="kernel")
            if mode == "full":  # a key that is complete already
                raise ConfigError("is refused here", key="train.epochs")
            if mode == "vague":  # no parameter named: the entry's own key
                raise ConfigError("something is off")
            if num_classes == 0:  # the trainer's context is no recipe key
                raise ConfigError("num_classes must be positive")
            if inner is not None:  # an entry built inside this one names this one's keys
                toys.build({"name": "ball", "size": inner}, key="")

    cases = [({"kernel": 2}, "toy.kernel: must be odd, got 2"),
             ({"mode": "full"}, "train.epochs: is refused here"),
             ({"mode": "vague"}, "toy: something is off"),
             ({"inner": -1}, "toy.size: must be positive, got -1")]
    for params, message in cases:
        with pytest.raises(ConfigError) as err:
            toys.build({"name": "net", **params})
        assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        toys.build({"name": "net"}, num_classes=0)
    assert str(err.value) == "toy: num_classes must be positive"


class _Base:
    """A family base: its own parameters, the context and a keyword shorthand for one field."""

    def __init__(self, weights=None, scale=1.0, *, context=None, num_classes=None):
        from lttoolbox.api import Context

        self.weights, self.scale = weights, scale
        self.context = Context.given(context, num_classes=num_classes)


def test_an_entry_that_forwards_kwargs_to_its_base_is_checked_and_listed_as_its_base(toys):
    @toys.register("child")
    class Child(_Base):
        """A child."""

        fixed_parameters = ("scale",)  # set here, not by a recipe

        def __init__(self, gamma=2.0, **base):
            super().__init__(scale=3.0, **base)
            self.gamma = gamma

    @toys.register("grandchild")
    class Grandchild(Child):
        """A grandchild."""

        def __init__(self, delta=0.5, **base):
            super().__init__(**base)
            self.delta = delta

    built = toys.build({"name": "grandchild", "delta": 1.0, "gamma": 4.0, "weights": "w"})
    assert (built.delta, built.gamma, built.weights, built.scale) == (1.0, 4.0, "w", 3.0)
    with pytest.raises(ConfigError) as err:  # a misspelt base parameter, with the suggestion
        toys.build({"name": "grandchild", "wieghts": "w"}, num_classes=3)
    assert str(err.value) == ("toy.wieghts: toy 'grandchild' has no parameter 'wieghts'; did you "
                              "mean 'weights'? Accepted: context, delta, gamma, weights.")
    with pytest.raises(ConfigError, match=r"^toy.scale: toy 'child' has no parameter 'scale'"):
        toys.build({"name": "child", "scale": 2.0})
    rows = {name: params for name, params, _ in describe(toys)}
    assert rows["grandchild"] == ("delta=0.5, gamma=2.0, weights=None, context=None, "
                                  "num_classes=None")
    assert [p.name for p in recipe_parameters(toys, "child")] == [
        "gamma", "weights", "context", "num_classes"]


def test_an_entry_that_takes_context_receives_one_object(toys):
    from lttoolbox.api import Context

    @toys.register("reader")
    class Reader:
        def __init__(self, context=None, num_classes=None):
            self.context, self.num_classes = context, num_classes

    made = toys.build("reader", num_classes=3, class_counts=[2, 1, 1], run_data="x")
    assert isinstance(made.context, Context) and made.num_classes is None  # not by name
    assert (made.context.num_classes, made.context.class_counts) == (3, [2, 1, 1])
    given = Context.from_counts([2, 1, 1])
    assert toys.build("reader", **given.as_kwargs()).context is given
    assert toys.build("reader").context is None  # nothing offered: its default


def test_bad_cfg_shape_and_double_registration(toys):
    with pytest.raises(ConfigError, match="'name' key"):
        toys.build({"size": 1})
    with pytest.raises(ValueError, match="twice"):
        toys.register("ball")(object)


def test_public_registries_are_populated():
    for registry in (lttoolbox.DATASETS, lttoolbox.MODELS, lttoolbox.SAMPLERS, lttoolbox.LOSSES):
        assert len(registry) > 0, registry.kind
    assert "digits_lt" in lttoolbox.DATASETS and "resnet32" in lttoolbox.MODELS


def test_scoped_removes_what_was_registered_inside_and_keeps_the_rest(toys):
    with toys.scoped() as scope:
        assert scope is toys

        @toys.register("yoyo")
        class Yoyo:
            pass

        assert toys.names() == ["ball", "kite", "yoyo"]
        assert toys.build("yoyo").__class__ is Yoyo
    assert toys.names() == ["ball", "kite"]
    with toys.scoped():  # the name is free again, and an error inside still ends the scope
        toys.register("yoyo")(type("Other", (), {}))
        with pytest.raises(ValueError, match="twice"):
            toys.register("ball")(object)
    assert toys.names() == ["ball", "kite"]


def test_scoped_keeps_the_family_entries_it_imports(tmp_path, monkeypatch):
    # A family's entries are registered when its module is first imported; a scope entered
    # before that import must not take them away at its end.
    import lttoolbox.registry as registry_module

    (tmp_path / "toy_family.py").write_text(
        "from lttoolbox import registry\n"
        "registry.toy_family.register('native')(type('Native', (), {}))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_family", raising=False)
    reg = Registry("toy", "toy_family")
    monkeypatch.setattr(registry_module, "toy_family", reg, raising=False)
    with reg.scoped():
        reg.register("visitor")(type("Visitor", (), {}))
    assert reg.names() == ["native"]
    monkeypatch.delitem(sys.modules, "toy_family")


def test_a_toy_left_in_a_global_registry_is_reported():
    from conftest import registry_changes, registry_snapshot

    before = registry_snapshot()
    with lttoolbox.LOSSES.scoped():
        lttoolbox.LOSSES.register("toy_left_behind")(type("Toy", (), {}))
        assert registry_changes(before) == [
            "loss 'toy_left_behind' was left registered (by test_registry)"]
    assert registry_changes(before) == []


def test_module_examples_run():
    import doctest

    import lttoolbox.registry as registry_module

    result = doctest.testmod(registry_module)
    assert result.attempted >= 8 and result.failed == 0


def test_a_per_entry_table_fails_on_a_new_entry_without_data_and_on_stale_data(toys):
    from conftest import PerEntry

    table = PerEntry(toys, {"ball": 1, "kite": 2}, where="TABLE in test_x.py")
    assert table.names == ["ball", "kite"] and table["kite"] == 2
    table.check()
    toys.register("yoyo")(type("Yoyo", (), {}))            # a new entry: it becomes a case
    assert table.names == ["ball", "kite", "yoyo"]
    with pytest.raises(pytest.fail.Exception, match="toy 'yoyo' has no test data: add it to "
                                                    "TABLE in test_x.py"):
        table["yoyo"]
    with pytest.raises(AssertionError, match=r"no data for \['yoyo'\]"):
        table.check()
    stale = PerEntry(toys, {"ball": 1, "kite": 2, "yoyo": 3, "gone": 4}, where="T")
    with pytest.raises(AssertionError, match=r"unknown entries \['gone'\]"):
        stale.check()
    kites = PerEntry(toys, {"kite": 2}, where="T", select=lambda obj: not isinstance(obj, type))
    assert kites.names == ["kite"]
    kites.check()


def test_one_per_entry_keeps_one_recipe_of_each_entry_out_of_the_long_set():
    from conftest import one_per_entry

    params = one_per_entry({"ce": "ce", "ce_drw": "ce", "focal": "focal", "ldam_drw": "ldam"},
                           prefer=lambda name: name.endswith("_drw"))
    quick = [p for p in params if isinstance(p, str)]
    long = [p.values[0] for p in params if not isinstance(p, str)]
    assert quick == ["ce_drw", "focal", "ldam_drw"] and long == ["ce"]
    assert all(p.marks[0].name == "long" for p in params if not isinstance(p, str))
