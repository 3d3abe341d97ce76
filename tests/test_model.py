import numpy as np
import open_clip
import pytest
from PIL import Image

from clipdex.config import Settings
from clipdex.model import ModelSpec, ModelUnavailable, load_model
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder
from tests.conftest import run_cli


def _images():
    return [Image.new("RGB", (120 + 30 * i, 90), (40 * i, 200 - 30 * i, 90)) for i in range(4)]


def test_tiny_local_dir_model_encodes_unit_vectors(tiny_model_dir):
    model = load_model(Settings(model=f"local-dir:{tiny_model_dir}", device="cpu"))
    images = model.encode_images(_images())
    texts = model.encode_texts(["a red car", "a dog on a beach"])
    assert images.shape == (4, 64) and texts.shape == (2, 64) and model.dim == 64
    assert images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    # Same input, same vector; different inputs, different vectors.
    np.testing.assert_array_equal(model.encode_images(_images()), images)
    assert not np.allclose(images[0], images[1])
    # Preprocessed tensors and PIL images take the same path.
    np.testing.assert_allclose(model.encode_images(model.preprocess_images(_images())), images, atol=1e-6)


def test_model_is_loaded_once_per_process(tiny_model_dir):
    s = Settings(model=f"local-dir:{tiny_model_dir}", device="cpu")
    assert load_model(s) is load_model(s.replace(task_timeout=3))


def test_local_dir_key_does_not_depend_on_where_the_folder_is(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, copy)
    assert ModelSpec(f"local-dir:{copy}").key() == ModelSpec(f"local-dir:{tiny_model_dir}").key()
    retrained = write_model_folder(tmp_path / "elsewhere" / tiny_model_dir.name, TINY_MODEL_CFG, seed=1)
    assert ModelSpec(f"local-dir:{retrained}").key() != ModelSpec(f"local-dir:{tiny_model_dir}").key()


def test_builtin_name_and_local_dir_share_one_loader(tmp_path):
    """ViT-B-32 by name (random weights, seed 0) and a local-dir: copy of the same weights load
    through the same code and give identical vectors."""
    folder = write_model_folder(tmp_path / "vit-b-32", open_clip.get_model_config("ViT-B-32"), seed=0)
    by_name = load_model(Settings(model="ViT-B-32", pretrained="none", device="cpu"))
    by_folder = load_model(Settings(model=f"local-dir:{folder}", device="cpu"))
    assert type(by_name) is type(by_folder) and by_name.dim == by_folder.dim == 512
    assert by_name.key == "ViT-B-32/random-seed-0" and by_folder.key.startswith("local-dir:vit-b-32@")
    np.testing.assert_array_equal(by_name.encode_images(_images()), by_folder.encode_images(_images()))
    np.testing.assert_array_equal(by_name.encode_texts(["car"]), by_folder.encode_texts(["car"]))


def test_missing_default_weights_fail_with_one_sentence(tmp_path):
    settings = Settings(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu", offline=True)
    with pytest.raises(ModelUnavailable) as err:
        load_model(settings)
    assert "CLIPDEX_MODEL=local-dir:" in str(err.value)
    proc = run_cli("model", env={"CLIPDEX_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                                 "CLIPDEX_DEVICE": "cpu"}, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # The default (a Hugging Face text tower too): the same one sentence, no traceback.
    assert lines[-1].startswith("clipdex: Cannot load the weights of xlm-roberta-base-ViT-B-32 (laion5b_s13b_b90k)")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name, words", [
    ("local-dir:/nonexistent/folder", "not a folder"),
    ("NoSuchArch-1", "does not know model"),
])
def test_bad_model_names_are_explained(name, words, tmp_path):
    with pytest.raises(ModelUnavailable) as err:
        load_model(Settings(model=name, pretrained="x", device="cpu", offline=True))
    assert words in str(err.value)


def test_local_dir_without_config_is_explained(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelUnavailable) as err:
        load_model(Settings(model=f"local-dir:{tmp_path}", device="cpu"))
    assert "open_clip_config.json" in str(err.value)
