"""The image-folder loader: captions, crops, corrupt samples skipped and counted, clear errors."""

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tdd_lab.data.image_folder import ImageFolderDataset, collate_skipping


def make_folder(root, n=4, size=(48, 40)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, color=(10 * i, 0, 0)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a red square number {i}\n")
    return root


def test_samples_captions_and_crop(tmp_path):
    ds = ImageFolderDataset(make_folder(tmp_path / "d"), resolution=32)
    s = ds[1]
    assert s["pixel_values"].shape == (3, 32, 32) and s["prompt"] == "a red square number 1"
    assert s["original_size"].tolist() == [40, 48]
    assert -1.0 <= s["pixel_values"].min() and s["pixel_values"].max() <= 1.0
    assert s["crop_top_left"].tolist() == [0, (38 - 32) // 2]  # 48x40 -> 38x32 resize, center crop


def test_jsonl_captions(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    Image.new("RGB", (16, 16)).save(root / "a.jpg")
    (root / "captions.jsonl").write_text('{"file_name": "a.jpg", "text": "a black square"}\n')
    assert ImageFolderDataset(root, 16)[0]["prompt"] == "a black square"


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "c", n=3)
    (root / "broken.png").write_bytes(b"not a png at all")
    loader = DataLoader(ImageFolderDataset(root, 16), batch_size=4, collate_fn=collate_skipping)
    batch = next(iter(loader))
    assert batch["skipped"] == 1 and batch["pixel_values"].shape == (3, 3, 16, 16)
    assert isinstance(batch["prompt"], list) and len(batch["prompt"]) == 3
    assert torch.equal(batch["original_size"][0], torch.tensor([40, 48]))


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        ImageFolderDataset(tmp_path / "empty")


def test_too_many_corrupt_samples_stop_the_run(tmp_path):
    from tdd_lab.data.image_folder import DataQualityError, SkippingCollate

    root = make_folder(tmp_path / "m", n=6)
    for i in range(3):
        (root / f"zbad{i}.png").write_bytes(b"garbage")  # sorted last
    ok = DataLoader(ImageFolderDataset(root, 16), batch_size=3, collate_fn=SkippingCollate(0.5, min_seen=3))
    assert sum(b["skipped"] for b in ok) == 3  # 3 of 9 = 33% <= 50%: runs through, counted
    strict = DataLoader(ImageFolderDataset(root, 16), batch_size=9, collate_fn=SkippingCollate(0.1, min_seen=3))
    with pytest.raises(DataQualityError, match=r"3 of 9 samples were unreadable \(33.3%\), more than data.max_bad_fraction=0.1"):
        next(iter(strict))


def test_caption_files_errors_name_file_and_line(tmp_path):
    root = make_folder(tmp_path / "j", n=2)
    path = root / "captions.jsonl"
    path.write_text('{"file_name": "img0.png", "text": "zero"}\n\n{"file_name": "img1.png", "text": "one",}\n')
    with pytest.raises(ValueError, match=rf"^{path}: line 3: malformed JSON \(.*\)$"):  # the blank line counts
        ImageFolderDataset(root, 16)
    path.write_text('{"file_name": "img0.png", "text": "zero"}\n["img1.png", "one"]\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2: expected a JSON object, got list"):
        ImageFolderDataset(root, 16)
    path.write_text('{"file_name": "img0.png", "description": "zero"}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 1: columns \['description', 'file_name'\] name no caption"):
        ImageFolderDataset(root, 16)


def test_csv_caption_columns_aliases_or_a_clear_error(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(root / name)
    (root / "captions.csv").write_text("Image,Caption\na.png,a black square\nb.png,another one\n")
    ds = ImageFolderDataset(root, 16)
    assert [ds[i]["prompt"] for i in range(2)] == ["a black square", "another one"]
    (root / "captions.csv").write_text("path,prompt\na.png,first\n")
    assert ImageFolderDataset(root, 16)[0]["prompt"] == "first"
    (root / "captions.csv").write_text("name,words\na.png,hi\n")
    with pytest.raises(ValueError, match=r"captions.csv: header: columns \['name', 'words'\] name no image file; "
                                         r"expected one of file_name, .* and one of text, caption, prompt"):
        ImageFolderDataset(root, 16)


def test_uncaptioned_folder_is_refused_unless_allowed(tmp_path, caplog):
    root = tmp_path / "u"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(root / f"{i}.png")
    with pytest.raises(ValueError, match="none of its 3 images has a caption .* set data.allow_uncaptioned=true"):
        ImageFolderDataset(root, 16)
    ds = ImageFolderDataset(root, 16, allow_uncaptioned=True)
    assert ds[0]["prompt"] == ""  # trained unconditionally, as asked
    (root / "1.txt").write_text("one")
    with caplog.at_level("WARNING"):
        assert ImageFolderDataset(root, 16)[1]["prompt"] == "one"
    assert "2 of 3 images have no caption (e.g. 0.png, 2.png)" in caplog.text
