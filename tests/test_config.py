import re
from pathlib import Path

import pytest

from clipdex.config import ConfigError, Settings, documented_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s.database_url is None and s.uses_embedded_database
    assert s.broker_url is None
    assert (s.model, s.pretrained, s.device) == ("xlm-roberta-base-ViT-B-32", None, "auto")
    assert not s.model_named                   # indexing follows the library's default model
    assert s.home == Path("~/.local/share/clipdex").expanduser()
    assert s.roots == {}


def test_a_built_in_model_gets_its_recommended_weights_or_must_name_them():
    from clipdex.model import ModelSpec, ModelUnavailable

    assert ModelSpec.from_settings(Settings.from_env({})).key() == "xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k"
    assert ModelSpec.from_settings(Settings.from_env({"CLIPDEX_MODEL": "ViT-B-32"})).pretrained == "laion2b_s34b_b79k"
    assert ModelSpec.from_settings(Settings.from_env({"CLIPDEX_MODEL": "ViT-B-32", "CLIPDEX_PRETRAINED": "none"})
                                   ).random_weights
    with pytest.raises(ModelUnavailable, match="name its weights with CLIPDEX_PRETRAINED"):
        ModelSpec.from_settings(Settings.from_env({"CLIPDEX_MODEL": "ViT-L-14"}))   # never random by omission


def test_environment_is_read_and_flags_override_it():
    env = {
        "CLIPDEX_DATABASE_URL": "postgresql://u@db/x",
        "CLIPDEX_MODEL": "hf-hub:org/repo",
        "CLIPDEX_ROOTS": "photos=/mnt/nas/photos, phone = /media/phone ",
        "CLIPDEX_TASK_TIMEOUT": "128",
    }
    s = Settings.from_env(env, model="local-dir:/m", task_timeout=None)
    assert s.database_url == "postgresql://u@db/x"
    assert s.model == "local-dir:/m"          # the flag wins
    assert s.task_timeout == 128                # None means "flag not given"
    assert s.roots == {"photos": Path("/mnt/nas/photos"), "phone": Path("/media/phone")}


def test_round_trip_through_environment():
    s = Settings.from_env({"CLIPDEX_ROOTS": "a=/x,b=/y", "CLIPDEX_OFFLINE": "yes"}, device="cpu")
    assert Settings.from_env(s.to_environ()) == s


@pytest.mark.parametrize("env, message", [
    ({"CLIPDEX_ROOTS": "photos"}, "name=/path"),
    ({"CLIPDEX_ROOTS": "bad name=/x"}, "letters, digits"),
    ({"CLIPDEX_TASK_TIMEOUT": "lots"}, "whole number"),
    ({"CLIPDEX_TASK_TIMEOUT": "0"}, "at least 1"),
    ({"CLIPDEX_OFFLINE": "maybe"}, "true or false"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert next(iter(env)) in str(err.value) and message in str(err.value)


def test_every_setting_is_in_the_readme_table():
    readme = (REPO / "README.md").read_text()
    for env, _default, _doc in documented_settings():
        assert re.search(rf"^\| `{env}` \|", readme, re.M), f"{env} missing from README's table"


def test_only_the_config_module_reads_the_environment():
    offenders = []
    for path in list((REPO / "clipdex").rglob("*.py")) + list((REPO / "indexer").rglob("*.py")) \
            + list((REPO / "webapp").rglob("*.py")):
        if path.name == "config.py":
            continue
        text = path.read_text()
        if re.search(r"os\.environ\b|os\.getenv\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
