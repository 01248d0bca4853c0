"""Loading every dataset format, with real images, and refusing bad data with one clear line."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST
from medge.edge.errors import InputError
from medge.edge.preprocess import PreprocessSpec, load_and_preprocess, preprocess, window_to_uint8
from medge.train.data import load_dataset
from tests.fixtures.models import pneumoniamnist_images, write_dicom, write_split_tree

DICOM_NAMES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_jpeg2k.dcm",
               "examples_ybr_color.dcm", "examples_rgb_color.dcm")


def mixed(archive, split: str, count: int):
    """`count` images and labels of a split, both classes (the bundled train split is ordered by class)."""
    pick = np.random.default_rng(0).choice(len(archive[f"{split}_labels"]), count, replace=False)
    return archive[f"{split}_images"][pick], archive[f"{split}_labels"][pick]


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------- formats


def test_bundled_pneumoniamnist_is_the_default_with_named_classes_and_official_splits():
    dataset = load_dataset()
    assert dataset.path == Path(PNEUMONIAMNIST).resolve() and dataset.format == "npz"
    assert dataset.classes == ["normal", "pneumonia"] and dataset.task == "binary"
    assert {name: split.counts(2) for name, split in dataset.splits.items()} == {
        "train": [1214, 3494], "val": [135, 389], "test": [234, 390]}
    test = dataset.splits["test"]
    assert test.x.shape == (624, 28, 28, 1) and test.x.dtype == np.float32 and test.y.dtype == np.int64
    raw = np.load(PNEUMONIAMNIST)["test_images"][5]
    # The one shared preprocessing, nothing private: identical to what the device computes.
    assert np.array_equal(test.x[5], preprocess(raw, dataset.spec))
    assert "test: 624 images (normal=234, pneumonia=390)" in dataset.describe()


def test_npz_is_resized_and_colour_converted_by_the_spec():
    spec = PreprocessSpec(height=40, width=40, channels=3, interpolation="linear", normalization="symmetric")
    dataset = load_dataset(PNEUMONIAMNIST, spec=spec)
    x = dataset.splits["val"].x
    assert x.shape == (524, 40, 40, 3) and -1.0 <= x.min() < 0 < x.max() <= 1.0
    assert np.array_equal(x[:, :, :, 0], x[:, :, :, 2])  # grey replicated into RGB


def test_npz_without_val_and_test_is_split_stratified_and_reproducibly_by_seed(tmp_path):
    archive = np.load(PNEUMONIAMNIST)
    path = tmp_path / "train_only.npz"
    images, labels = mixed(archive, "train", 1000)
    np.savez(path, train_images=images, train_labels=labels)
    first = load_dataset(path, classes="normal,pneumonia", val_split=0.2, test_split=0.1, seed=3)
    again = load_dataset(path, classes=["normal", "pneumonia"], val_split=0.2, test_split=0.1, seed=3)
    other = load_dataset(path, classes="normal,pneumonia", val_split=0.2, test_split=0.1, seed=4)
    sizes = {name: len(split) for name, split in first.splits.items()}
    assert sizes == {"train": 700, "val": 200, "test": 100}
    assert first.splits["val"].names == again.splits["val"].names != other.splits["val"].names
    ratio = lambda split: split.y.mean()  # noqa: E731
    assert abs(ratio(first.splits["val"]) - ratio(first.splits["train"])) < 0.02
    assert not set(first.splits["test"].names) & set(first.splits["train"].names)


def test_npz_without_class_names_gets_numbered_classes(tmp_path):
    archive = np.load(PNEUMONIAMNIST)
    path = tmp_path / "copy.npz"
    splits = {split: mixed(archive, split, 100) for split in ("train", "val", "test")}
    np.savez(path, **{f"{split}_{kind}": arrays[i] for split, arrays in splits.items()
                      for i, kind in enumerate(("images", "labels"))})
    assert load_dataset(path).classes == ["class0", "class1"]


def test_class_per_folder_tree_with_splits_mixed_formats_and_skipped_files_counted(tmp_path):
    root = write_split_tree(tmp_path / "tree", {"train": 12, "val": 5, "test": 5})
    # The same real image as 16-bit PNG and as RGB JPEG decodes into the same model input.
    image, _ = pneumoniamnist_images(1, 1, "train", seed=7)
    cv2.imwrite(str(root / "train" / "pneumonia" / "deep.png"), image[0].astype(np.uint16) * 257)
    cv2.imwrite(str(root / "train" / "pneumonia" / "colour.jpeg"), cv2.cvtColor(image[0], cv2.COLOR_GRAY2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 100])
    (root / "train" / "normal" / "README.txt").write_text("acquired 2018")
    (root / "train" / "normal" / ".DS_Store").write_bytes(b"\0\0")
    (root / "LICENSE.txt").write_text("CC BY 4.0")
    dataset = load_dataset(root)
    assert dataset.format == "folder" and dataset.classes == ["normal", "pneumonia"]
    assert {name: split.counts(2) for name, split in dataset.splits.items()} == {
        "train": [12, 14], "val": [5, 5], "test": [5, 5]}
    assert len(dataset.skipped) == 3 and "skipped 3 non-image file(s)" in dataset.describe()
    assert dataset.to_dict()["skipped"] == 3
    assert ("LICENSE.txt", "not in a class folder") in dataset.skipped
    names = dataset.splits["train"].names
    deep = dataset.splits["train"].x[names.index("train/pneumonia/deep.png")]
    # 16-bit data is windowed to its own range, as a viewer without DICOM window tags does.
    assert np.allclose(deep, preprocess(window_to_uint8(image[0]), dataset.spec), atol=1 / 255 + 1e-6)
    colour = dataset.splits["train"].x[names.index("train/pneumonia/colour.jpeg")]
    assert np.abs(colour - preprocess(image[0], dataset.spec)).mean() < 2 / 255


def test_single_tree_is_split_by_fractions_with_a_fixed_seed(tmp_path):
    root = tmp_path / "flat"
    for label, name in enumerate(("normal", "pneumonia")):
        (root / name).mkdir(parents=True)
        for image, index in zip(*pneumoniamnist_images(label, 30)):
            cv2.imwrite(str(root / name / f"{index}.png"), image)
    dataset = load_dataset(root, val_split=0.2, test_split=0.2, seed=1)
    assert {name: split.counts(2) for name, split in dataset.splits.items()} == {
        "train": [18, 18], "val": [6, 6], "test": [6, 6]}
    assert load_dataset(root, val_split=0.2, test_split=0.2, seed=1).splits["test"].names == dataset.splits["test"].names


def test_full_size_chest_xray_jpegs_load_through_the_shared_preprocessing(tmp_path):
    from medge.data import chest_xray_sample_files

    root = tmp_path / "xrays"
    for file in chest_xray_sample_files():
        (root / file.parent.name.lower()).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, root / file.parent.name.lower() / file.name)
    spec = PreprocessSpec(64, 64, 1)
    dataset = load_dataset(root, spec=spec, val_split=0, test_split=0)
    assert dataset.splits["train"].x.shape == (3, 64, 64, 1)
    names = dataset.splits["train"].names
    for index, name in enumerate(names):
        assert np.array_equal(dataset.splits["train"].x[index], load_and_preprocess(root / name, spec))


def test_dicom_folder_with_labels_csv(dicom_folder):
    dataset = load_dataset(dicom_folder, val_split=0.25, test_split=0.25)
    assert dataset.format == "dicom" and dataset.classes == ["normal", "pneumonia"]
    assert sum(len(split) for split in dataset.splits.values()) == 80
    assert {name: split.counts(2) for name, split in dataset.splits.items()}["test"] == [10, 10]
    # DICOM rescale/window and MONOCHROME1 inversion give back the original X-ray (the shared
    # decoder stretches the windowed values to the full display range).
    split = dataset.splits["train"]
    archive = np.load(PNEUMONIAMNIST)
    for position in range(3):
        index = int(Path(split.names[position]).stem[1:])
        original = window_to_uint8(archive["train_images"][index])
        assert np.allclose(split.x[position], preprocess(original, dataset.spec), atol=2 / 255)


def test_a_dicom_dataset_says_its_modalities_and_the_other_formats_do_not(dicom_folder):
    # What convert's OOD gate leaves out of its modality sets when no --modality is declared.
    assert load_dataset(dicom_folder, val_split=0.25, test_split=0.25).modalities() == ("DX",)
    assert load_dataset(PNEUMONIAMNIST).modalities() == ()


def test_real_bundled_dicoms_of_every_kind_load_with_a_split_column(tmp_path):
    from pydicom.data import get_testdata_file

    root = tmp_path / "modalities"
    root.mkdir()
    rows = ["file,label,split"]
    for number, name in enumerate(DICOM_NAMES):
        shutil.copy(get_testdata_file(name), root / name)
        label = "ct" if name in ("CT_small.dcm", "JPEG2000.dcm") else "other"
        rows.append(f"{name},{label},{'test' if number >= 4 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "notes.txt").write_text("not listed")
    dataset = load_dataset(root, spec=PreprocessSpec(32, 32, 1))
    assert dataset.classes == ["ct", "other"]
    assert len(dataset.splits["train"]) == 4 and len(dataset.splits["test"]) == 2
    assert dataset.splits["train"].x.shape[1:] == (32, 32, 1)
    assert all(np.ptp(x) > 0.1 for x in dataset.splits["train"].x)  # real content, not blank frames
    assert dataset.skipped == [("notes.txt", "not listed in labels.csv")]


# --------------------------------------------------------------------------- bad data


def test_unreadable_image_names_the_file(tmp_path):
    root = write_split_tree(tmp_path / "tree", {"train": 4, "val": 2})
    bad = root / "train" / "normal" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(InputError) as error:
        load_dataset(root)
    assert "broken.png" in one_line(error) and "not a readable image" in str(error.value)


def test_label_not_in_classes(tmp_path, dicom_folder):
    root = write_split_tree(tmp_path / "tree", {"train": 4})
    with pytest.raises(InputError) as error:
        load_dataset(root, classes="normal,covid")
    assert "'pneumonia' not in classes (normal, covid)" in one_line(error)

    archive = np.load(PNEUMONIAMNIST)
    images, labels = mixed(archive, "train", 50)
    labels[7] = 2
    npz = tmp_path / "three.npz"
    np.savez(npz, train_images=images, train_labels=labels)
    with pytest.raises(InputError) as error:
        load_dataset(npz, classes="normal,pneumonia")
    assert "train[7] has label 2, not in classes" in one_line(error)

    copy = tmp_path / "dicom"
    shutil.copytree(dicom_folder, copy)
    lines = (copy / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",covid"
    (copy / "labels.csv").write_text("\n".join(lines))
    with pytest.raises(InputError) as error:
        load_dataset(copy, classes="normal,pneumonia")
    assert "labels.csv:4" in one_line(error) and "'covid' not in classes" in str(error.value)


def test_empty_class(tmp_path):
    root = write_split_tree(tmp_path / "tree", {"train": 4})
    for file in (root / "train" / "normal").iterdir():
        file.unlink()
    with pytest.raises(InputError) as error:
        load_dataset(root)
    assert "empty class 'normal'" in one_line(error)


def test_mismatched_shapes(tmp_path):
    archive = np.load(PNEUMONIAMNIST)
    npz = tmp_path / "bad.npz"
    images, labels = mixed(archive, "train", 10)
    np.savez(npz, train_images=images, train_labels=labels[:9])
    with pytest.raises(InputError) as error:
        load_dataset(npz)
    assert "mismatched shapes" in one_line(error) and "10 images" in str(error.value)
    np.savez(npz, train_images=images, train_labels=labels,
             val_images=np.zeros((4, 32, 32), np.uint8), val_labels=archive["val_labels"][:4])
    with pytest.raises(InputError) as error:
        load_dataset(npz)
    assert "mismatched shapes between splits" in one_line(error)


def test_missing_dicom_and_missing_dataset_and_wrong_file(tmp_path, dicom_folder):
    copy = tmp_path / "dicom"
    shutil.copytree(dicom_folder, copy)
    victim = sorted(copy.glob("*.dcm"))[0]
    victim.unlink()
    with pytest.raises(InputError) as error:
        load_dataset(copy)
    assert f"{victim.name}: file not found" in one_line(error)
    with pytest.raises(InputError) as error:
        load_dataset(tmp_path / "nowhere")
    assert "dataset not found" in one_line(error)
    text = tmp_path / "data.txt"
    text.write_text("x")
    with pytest.raises(InputError) as error:
        load_dataset(text)
    assert "not a dataset" in one_line(error)


def test_corrupt_dicom_names_the_file(tmp_path):
    image, _ = pneumoniamnist_images(0, 1)
    root = tmp_path / "dicom"
    root.mkdir()
    write_dicom(root / "good.dcm", image[0])
    write_dicom(root / "good2.dcm", image[0])
    (root / "bad.dcm").write_bytes((root / "good.dcm").read_bytes()[:400])
    (root / "labels.csv").write_text("file,label\ngood.dcm,normal\ngood2.dcm,pneumonia\nbad.dcm,pneumonia\n")
    with pytest.raises(InputError) as error:
        load_dataset(root, val_split=0, test_split=0)
    assert "bad.dcm" in one_line(error)
