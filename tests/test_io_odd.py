"""Odd files and odd data: one clear line naming the file, never a traceback or a hang."""

from __future__ import annotations

import io as bytes_io
import zipfile

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens import io
from keraslens.cli import cli
from keraslens.errors import KeraslensError


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def npy_bytes(shape, dtype="float32", extra=b"\0" * 64):
    """A .npy file whose header claims `shape` but which holds only `extra` bytes."""
    stream = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    return stream.getvalue() + extra


def test_a_npy_header_claiming_a_trillion_samples_is_refused_before_allocating(tmp_path, model):
    (tmp_path / "huge.npy").write_bytes(npy_bytes((10**12, 4)))
    with pytest.raises(KeraslensError, match=r"claims shape \(1000000000000, 4\).*truncated"):
        io.load_data(str(tmp_path / "huge.npy"), model)


def test_a_forged_npz_member_is_refused_naming_it(tmp_path, model):
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as archive:
        archive.writestr("x.npy", npy_bytes((10**12, 4)))
    with pytest.raises(KeraslensError, match=r"forged.npz\[x.npy\]'.*claims shape"):
        io.load_data(str(tmp_path / "forged.npz"), model)


def test_an_empty_npy_says_it_is_empty_not_aborted(tmp_path, model, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    (tmp_path / "empty.npy").write_bytes(b"")
    model.save(tmp_path / "m.keras")
    out = CliRunner().invoke(
        cli, ["report", str(tmp_path / "m.keras"), "--data", str(tmp_path / "empty.npy")]
    )
    assert out.exit_code == 2
    assert "Aborted" not in out.output
    assert "empty.npy': the file is empty (0 bytes)." in out.stderr


def test_a_npy_that_is_not_an_array_says_so(tmp_path, model):
    (tmp_path / "text.npy").write_text("hello world")
    with pytest.raises(KeraslensError, match="text.npy': it is not a .npy array"):
        io.load_data(str(tmp_path / "text.npy"), model)


def image_model():
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3)])


@pytest.mark.parametrize(
    "content",
    [b"not an image at all", None],  # None: the first half of a real PNG
    ids=["garbage", "truncated"],
)
def test_a_corrupt_image_in_a_folder_names_the_file(tmp_path, content):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "imgs" / "good.png")
    if content is None:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / "whole.png")
        content = (tmp_path / "whole.png").read_bytes()[:2000]
    (tmp_path / "imgs" / "bad.png").write_bytes(content)
    with pytest.raises(KeraslensError, match=r"Cannot read image '.*imgs/bad.png'"):
        io.load_data(str(tmp_path / "imgs"), image_model())


def test_rescale_multiplies_the_pixels_of_an_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4), (255, 51, 0)).save(tmp_path / "imgs" / "a.png")
    loaded = io.load_data(str(tmp_path / "imgs"), image_model(), rescale=1 / 255)
    np.testing.assert_allclose(loaded.inputs[0, 0, 0], [1.0, 0.2, 0.0], rtol=1e-6)
    assert "x 0.00392157" in loaded.source


def test_rescale_of_arrays_is_refused(tmp_path, model):
    np.save(tmp_path / "x.npy", tiny_data())
    with pytest.raises(KeraslensError, match="--rescale applies to a folder of images"):
        io.load_data(str(tmp_path / "x.npy"), model, rescale=0.5)


@pytest.mark.parametrize(("given", "code"), [("1/255", 0), ("0", 2), ("1/0", 2), ("lots", 2)])
def test_rescale_is_parsed_as_a_positive_number_or_a_fraction(tmp_path, given, code, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    cnn = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3, name="conv")])
    cnn.save(tmp_path / "cnn.keras")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "imgs" / "a.png")
    out = CliRunner().invoke(
        cli,
        ["report", str(tmp_path / "cnn.keras"), "--data", str(tmp_path / "imgs"), "-q"]
        + ["--rescale", given, "-o", str(tmp_path / "r.html")],
    )
    assert out.exit_code == code, out.output
    if code:
        assert "Invalid value for '--rescale'" in out.output


def test_ten_labels_for_forty_samples_are_refused(tmp_path, model):
    np.save(tmp_path / "x.npy", tiny_data()[:40])
    np.save(tmp_path / "y.npy", np.arange(10))
    with pytest.raises(KeraslensError, match="give 10 labels for 40 samples"):
        io.load_data(str(tmp_path / "x.npy"), model, labels=str(tmp_path / "y.npy"))


def test_fewer_labels_than_samples_with_samples_is_one_line(tmp_path, model, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    np.save(tmp_path / "y.npy", np.arange(20))
    out = CliRunner().invoke(
        cli,
        ["report", str(tmp_path / "m.keras"), "--data", str(tmp_path / "x.npy")]
        + ["--labels", str(tmp_path / "y.npy"), "--samples", "30"],
    )
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "give 20 labels for 64 samples" in out.stderr


def test_a_labels_npz_with_two_arrays_points_to_the_labels_key_of_the_data(tmp_path, model):
    np.save(tmp_path / "x.npy", tiny_data())
    np.savez(tmp_path / "y.npz", a=np.arange(64), b=np.arange(64))
    with pytest.raises(KeraslensError, match="holds 2 arrays.*--labels KEY") as raised:
        io.load_data(str(tmp_path / "x.npy"), model, labels=str(tmp_path / "y.npz"))
    assert "--data-key" in str(raised.value) and "choose one with --data-key" not in str(
        raised.value
    )


@pytest.fixture
def loader(tmp_path, monkeypatch):
    """Write `probe.py` with the given body of `load()` and return its spec."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(body, name="probe"):
        (tmp_path / f"{name}.py").write_text(
            "import numpy as np\n\ndef load():\n" + "".join(f"    {b}\n" for b in body)
        )
        return f"{name}:load"

    return write


def test_an_exception_in_the_users_loader_names_the_loader_and_its_message(loader, model):
    spec = loader(["return 1 / 0"], name="raising_probe")
    with pytest.raises(KeraslensError) as raised:
        io.load_data(spec, model)
    assert str(raised.value) == (
        "Data loader 'raising_probe:load' raised ZeroDivisionError: division by zero"
    )


@pytest.mark.parametrize(
    ("body", "described"),
    [
        (["pass"], "returned None (does the function end without a return statement?)"),
        (["return 'x_val.npy'"], "returned a string ('x_val.npy'), not the data itself"),
        (["return (np.zeros((2, 4)) for _ in range(3))"], "returned a generator; wrap it in"),
    ],
    ids=["none", "string", "generator"],
)
def test_a_loader_returning_no_data_is_described_as_such(loader, model, body, described):
    spec = loader(body, name=f"probe_{abs(hash(body[0]))}")
    with pytest.raises(KeraslensError, match="it must return an array") as raised:
        io.load_data(spec, model)
    assert described in str(raised.value)


def test_non_finite_inputs_are_counted_by_value_sample_and_input():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    x_a = np.zeros((5, 2), "float32")
    x_b = np.zeros((5, 3), "float32")
    x_a[1, 0] = np.nan
    x_a[3, 1] = np.inf
    x_b[3, 2] = -np.inf
    assert io.non_finite(model, {"a": x_a, "b": x_b}) == {
        "values": 3,
        "samples": 2,
        "inputs": ["a", "b"],
    }
    assert io.non_finite(model, {"a": np.zeros((5, 2)), "b": x_b}) == {
        "values": 1,
        "samples": 1,
        "inputs": ["b"],
    }
