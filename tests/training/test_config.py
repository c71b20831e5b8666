"""genrec/config.py and training/presets.py: presets, command-line overrides, the method's own
sections, round trip through a manifest dict."""

import json

import pytest

from genrec.config import TrainConfig, apply_override, config_from_dict
from genrec.errors import ConfigError
from genrec.idgenrec.minting import MintConfig
from genrec.modeling import ModelConfig
from genrec.registry import config_class
from training.presets import PRESETS, preset


def test_presets_exist():
    assert {"tiny", "ml100k"} <= set(PRESETS)
    for name in PRESETS:
        config = preset(name)
        assert isinstance(config, TrainConfig)
        assert config.name == name
        assert isinstance(config.method, config_class(config.kind))
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for name in ("tiny", "ml100k"):
        config = preset(name)
        assert isinstance(config.recommender.model, ModelConfig)
        assert isinstance(config.generator.mint, MintConfig)
        # The two T5s must share one vocabulary, not one config object.
        assert config.generator.model is not config.recommender.model
    with pytest.raises(ConfigError, match="tiny"):
        preset("no-such-preset")


def test_a_config_has_only_its_methods_sections():
    idgenrec, cllm4rec = preset("tiny"), preset("cllm4rec-tiny")
    assert "recommender" in idgenrec.to_dict() and "cllm4rec" not in idgenrec.to_dict()
    assert "cllm4rec" in cllm4rec.to_dict() and "recommender" not in cllm4rec.to_dict()
    with pytest.raises(AttributeError, match="recommender"):
        _ = cllm4rec.recommender
    with pytest.raises(ConfigError, match="recommender.epochs"):
        apply_override(cllm4rec, "recommender.epochs=3")
    with pytest.raises(ConfigError, match="preset"):
        apply_override(idgenrec, "kind=cllm4rec")
    with pytest.raises(ConfigError, match="takes"):
        TrainConfig(kind="cllm4rec", method=idgenrec.method)
    with pytest.raises(ConfigError, match="unknown method kind"):
        TrainConfig(kind="nope")


def test_an_old_manifest_config_with_every_methods_sections_still_reads():
    """Bundles written before the method interface recorded every method's sections."""
    old = preset("tiny").to_dict()
    old["cllm4rec"] = {"finetune_epochs": 3}
    config = config_from_dict(old)
    assert config.kind == "idgenrec" and config == preset("tiny")


def test_presets_are_fresh_copies():
    a = preset("tiny")
    a.recommender.epochs = 999
    a.generator.model.d_model = 8
    b = preset("tiny")
    assert b.recommender.epochs != 999
    assert b.generator.model.d_model != 8


def test_override_nested_values():
    config = preset("tiny")
    apply_override(config, "recommender.epochs=3")
    assert config.recommender.epochs == 3 and type(config.recommender.epochs) is int
    apply_override(config, "recommender.epochs=4.0")  # an integral float is an int
    assert config.recommender.epochs == 4 and type(config.recommender.epochs) is int
    apply_override(config, "recommender.lr=0.01")
    assert config.recommender.lr == 0.01
    apply_override(config, "recommender.lr=1")  # an int where a float goes
    assert config.recommender.lr == 1.0 and type(config.recommender.lr) is float
    apply_override(config, "generator.mint.restrict_to_item_words=false")
    assert config.generator.mint.restrict_to_item_words is False
    apply_override(config, "generator.mint.penalty_max=12.5")
    assert config.generator.mint.penalty_max == 12.5
    apply_override(config, "recommender.model.d_model=48")
    assert config.recommender.model.d_model == 48
    assert config.generator.model.d_model != 48
    apply_override(config, "recommender.max_prefixes_per_user=null")
    assert config.recommender.max_prefixes_per_user is None
    apply_override(config, "recommender.max_prefixes_per_user=7")  # back from None
    assert config.recommender.max_prefixes_per_user == 7
    apply_override(config, "eval.users=50")
    assert config.eval.users == 50
    apply_override(config, "seed=7")
    assert config.seed == 7
    apply_override(config, "data.dataset=amazon-beauty")  # plain strings need no quotes
    assert config.data.dataset == "amazon-beauty"
    apply_override(config, 'data.dataset="ml-100k"')
    assert config.data.dataset == "ml-100k"
    apply_override(config, "data.data_dir=/tmp/some data")
    assert config.data.data_dir == "/tmp/some data"
    apply_override(config, "data.data_dir=5")  # a str field takes the text as written
    assert config.data.data_dir == "5"
    apply_override(config, "data.data_dir=null")
    assert config.data.data_dir is None
    apply_override(config, "data.data_dir=6")  # a str field that is None now
    assert config.data.data_dir == "6"
    apply_override(config, "eval.users=null")
    assert config.eval.users is None
    apply_override(config, "threads=3.0")
    assert config.threads == 3 and type(config.threads) is int
    apply_override(config, " data.kcore =2")
    assert config.data.kcore == 2


@pytest.mark.parametrize(
    "assignment",
    [
        "recommender.nope=1",  # unknown key
        "nope.epochs=1",  # unknown section
        "recommender.model.nope=1",
        "recommender.epochs.deeper=1",  # a key is not a section
        "recommender.epochs=abc",  # wrong types
        "recommender.epochs=2.5",
        "recommender.epochs=true",
        "recommender.lr=fast",
        "recommender.lr=true",
        "generator.mint.restrict_to_item_words=1",
        "generator.mint.restrict_to_item_words=yes",
        "eval.users=abc",  # None by default, but an int field
        "eval.users=2.5",
        "threads=true",
        "recommender=3",  # sections cannot be set whole
        "recommender.model=1",
        "generator.mint={}",
        "recommender.epochs",  # not key=value
        "",
    ],
)
def test_override_refused(assignment):
    config = preset("tiny")
    before = config.to_dict()
    with pytest.raises(ConfigError):
        apply_override(config, assignment)
    assert config.to_dict() == before


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_from_dict_round_trip(name):
    config = preset(name)
    assert config_from_dict(config.to_dict()) == config
    # Through JSON, as in a bundle manifest.
    rebuilt = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert rebuilt == config
    assert type(rebuilt.method) is type(config.method)
    if config.kind == "idgenrec":
        assert isinstance(rebuilt.generator.mint, MintConfig)
        assert isinstance(rebuilt.recommender.model, ModelConfig)


def test_config_from_dict_after_overrides_and_with_missing_keys():
    config = preset("tiny")
    for assignment in ("recommender.epochs=1", "eval.users=9", "generator.mint.num_groups=3", "threads=2"):
        apply_override(config, assignment)
    assert config_from_dict(config.to_dict()) == config
    # An older manifest without some keys gets the defaults for them.
    data = config.to_dict()
    del data["eval"]
    del data["recommender"]["model"]["d_kv"]
    rebuilt = config_from_dict(data)
    assert rebuilt.eval == TrainConfig().eval
    assert rebuilt.recommender.model.d_kv == ModelConfig().d_kv
    assert rebuilt.recommender.model.d_model == config.recommender.model.d_model
