"""Loading models and data: safe by default, clear about what is wrong."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest
from PIL import Image
from test_report_fixtures import tiny_data, tiny_model

from keraslens import io
from keraslens.errors import KeraslensError


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def lambda_model():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)]
    )


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_carrying_code_is_refused_unless_unsafe(tmp_path, suffix):
    path = tmp_path / f"lambda{suffix}"
    lambda_model().save(path)
    with pytest.raises(KeraslensError, match="carries a Lambda layer.*--unsafe"):
        io.load_model(path)
    assert io.load_model(path, unsafe=True).layers[0].__class__.__name__ == "Lambda"


def test_legacy_h5_loads_with_the_same_outputs(tmp_path, model):
    model.save(tmp_path / "m.h5")
    loaded = io.load_model(tmp_path / "m.h5")
    np.testing.assert_allclose(
        loaded.predict(tiny_data(), verbose=0), model.predict(tiny_data(), verbose=0), rtol=1e-6
    )


def test_saved_model_directory_is_wrapped_with_its_input_shape(tmp_path, model):
    model.export(tmp_path / "sm", verbose=False)
    loaded = io.load_model(tmp_path / "sm", unsafe=True)
    assert tuple(loaded.inputs[0].shape) == (None, 4)
    np.testing.assert_allclose(
        loaded(tiny_data()), model.predict(tiny_data(), verbose=0), rtol=1e-5
    )


def test_folder_without_saved_model_is_refused(tmp_path):
    with pytest.raises(KeraslensError, match="is not a SavedModel"):
        io.load_model(tmp_path)


def test_pickled_arrays_are_refused(tmp_path, model):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(KeraslensError, match="no pickled objects"):
        io.load_data(str(tmp_path / "objects.npy"), model)


def test_npz_data_key_and_labels_key(tmp_path, model):
    np.savez(tmp_path / "d.npz", x=tiny_data(), y=np.arange(64))
    loaded = io.load_data(str(tmp_path / "d.npz"), model, data_key="x", labels="y")
    assert loaded.inputs.shape == (64, 4) and loaded.labels[-1] == 63
    assert loaded.source == "d.npz[x]"


def test_npz_unknown_key_lists_the_arrays(tmp_path, model):
    np.savez(tmp_path / "d.npz", x=tiny_data(), y=np.arange(64))
    with pytest.raises(KeraslensError, match="has no array 'z'; it holds: x, y"):
        io.load_data(str(tmp_path / "d.npz"), model, data_key="z")


def test_labels_file(tmp_path, model):
    np.save(tmp_path / "x.npy", tiny_data())
    np.save(tmp_path / "y.npy", np.ones(64))
    assert (
        io.load_data(str(tmp_path / "x.npy"), model, labels=str(tmp_path / "y.npy")).labels.sum()
        == 64
    )


def test_image_folder_is_resized_to_the_input_and_labelled_by_subfolder(tmp_path):
    cnn = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Conv2D(2, 3)])
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / label / "a.png")
    loaded = io.load_data(str(tmp_path), cnn)
    assert loaded.inputs.shape == (2, 6, 5, 3) and loaded.labels.tolist() == [0, 1]
    assert loaded.inputs[0, 0, 0].tolist() == [255.0, 0.0, 0.0]


def test_module_function_returning_inputs_and_labels(tmp_path, model, monkeypatch):
    (tmp_path / "probe_data.py").write_text(
        "import numpy as np\n"
        "def load():\n    return np.zeros((3, 4), 'float32'), np.array([0, 1, 2])\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = io.load_data("probe_data:load", model)
    assert loaded.inputs.shape == (3, 4) and loaded.labels.tolist() == [0, 1, 2]


def test_wrong_shape_names_the_expected_shape(tmp_path, model):
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 1), "float32"))
    with pytest.raises(KeraslensError, match=r"shape \(2, 4, 1\); the model expects \(None, 4\)"):
        io.load_data(str(tmp_path / "x.npy"), model)


def two_input_model(built_on_dict: bool = False) -> keras.Model:
    """Inputs 'a' (4 features) and 'b' (3 features); keyed 'left'/'right' when built on a dict."""
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    inputs = {"left": a, "right": b} if built_on_dict else [a, b]
    return keras.Model(inputs, keras.layers.Dense(2)(joined), name="two")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "it is empty"),
        (b"hello", "it is not a zip archive"),
        (b"PK\x03\x04garbage" * 10, "it is not a zip archive"),
    ],
)
def test_keras_file_that_is_not_an_archive_says_so(tmp_path, content, problem):
    (tmp_path / "m.keras").write_bytes(content)
    with pytest.raises(KeraslensError, match=f"'.*m.keras': {problem}.*model.save"):
        io.load_model(tmp_path / "m.keras")


def write_archive(path, **members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name.replace("_", "."), text)


def test_zip_without_config_json_is_not_a_keras_model(tmp_path):
    write_archive(tmp_path / "m.keras", foo_txt="x")
    with pytest.raises(KeraslensError, match="zip archive without config.json"):
        io.load_model(tmp_path / "m.keras")


def test_unknown_class_in_config_names_the_class(tmp_path):
    write_archive(tmp_path / "m.keras", config_json='{"class_name": "Nope", "config": {}}')
    with pytest.raises(KeraslensError, match="built from 'Nope', which Keras does not know"):
        io.load_model(tmp_path / "m.keras")


def test_config_that_is_not_json_says_so(tmp_path):
    write_archive(tmp_path / "m.keras", config_json="{not json", metadata_json="{}")
    with pytest.raises(KeraslensError, match="its config.json is not valid JSON"):
        io.load_model(tmp_path / "m.keras")


def test_subclassed_model_whose_class_is_not_imported_names_the_class(tmp_path):
    @keras.saving.register_keras_serializable(package="keraslens_test")
    class Unimported(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Unimported()
    model(tiny_data())
    model.save(tmp_path / "sub.keras")
    del keras.saving.get_custom_objects()["keraslens_test>Unimported"]
    with pytest.raises(
        KeraslensError, match="built from 'Unimported'.*import the module"
    ) as raised:
        io.load_model(tmp_path / "sub.keras")
    assert "save the model as a functional one" in str(raised.value)


@pytest.mark.parametrize(
    ("built_on_dict", "keys"), [(False, ("b", "a")), (True, ("right", "left"))]
)
def test_npz_with_one_array_per_input_feeds_a_multi_input_model(tmp_path, built_on_dict, keys):
    arrays = {keys[0]: np.zeros((5, 3), "float32"), keys[1]: np.ones((5, 4), "float32")}
    np.savez(tmp_path / "d.npz", **arrays)
    loaded = io.load_data(str(tmp_path / "d.npz"), two_input_model(built_on_dict))
    assert {key: value.shape for key, value in loaded.inputs.items()} == {
        keys[0]: (5, 3),
        keys[1]: (5, 4),
    }


def test_npz_without_an_array_for_an_input_names_the_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 4), "float32"), y=np.zeros((5, 3), "float32"))
    with pytest.raises(KeraslensError, match=r"arrays \['x', 'y'\]; model 'two' takes inputs"):
        io.load_data(str(tmp_path / "d.npz"), two_input_model())


def test_dict_of_inputs_is_matched_by_name_not_position():
    reversed_order = {"b": np.zeros((5, 3), "float32"), "a": np.ones((5, 4), "float32")}
    io.check_data(two_input_model(), reversed_order)


def test_scalar_npy_has_no_sample_axis(tmp_path, model):
    np.save(tmp_path / "s.npy", np.float32(3.0))
    with pytest.raises(KeraslensError, match="is a scalar: it has no sample axis"):
        io.load_data(str(tmp_path / "s.npy"), model)
