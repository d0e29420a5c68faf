"""Camera images carry their orientation in EXIF: every reader shows them turned as the camera held
them, and where a label file was made on the stored pixels instead, the labels' size decides."""
import json

import numpy as np
from PIL import Image

from edgeda.data.coco_masks import load_coco_masks
from edgeda.data.dense_files import load_dense_folder
from edgeda.data.detection_files import load_coco, load_yolo
from edgeda.data.files import load_folder, read_image
from edgeda.data.transforms import prepare_image

H, W = 6, 10  # stored pixels; orientation 6 shows them W x H (turned 90 degrees clockwise)


def _stored():
    a = np.zeros((H, W, 3), np.uint8)
    a[0, 0] = (255, 0, 0)  # top-left of the stored pixels
    a[:, W - 3:] = (0, 0, 200)  # a right-hand band: the "object"
    return a


def _save(path, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_stored()).save(path, exif=exif)
    return path


def test_read_image_turns_each_exif_orientation_as_shown_and_keeps_stored_pixels_for_stored_labels(tmp_path):
    a = _stored()
    shown = {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.transpose(1, 0, 2),
             6: np.rot90(a, -1), 7: a.transpose(1, 0, 2)[::-1, ::-1], 8: np.rot90(a, 1)}
    for o, want in shown.items():
        got = read_image(_save(tmp_path / f"o{o}.png", o))
        np.testing.assert_array_equal(got, want, err_msg=f"orientation {o}")
    p = tmp_path / "o6.png"
    np.testing.assert_array_equal(read_image(p, (W, H)), np.rot90(a, -1))  # labels made as shown
    np.testing.assert_array_equal(read_image(p, (H, W)), a)  # labels made on the stored pixels
    bad = tmp_path / "bad.png"
    exif = Image.Exif()
    exif[0x0112] = 42  # not an orientation: read as stored
    Image.fromarray(a).save(bad, exif=exif)
    np.testing.assert_array_equal(read_image(bad), a)


def test_class_folders_show_images_turned(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _save(tmp_path / c / "x.png")
    dom = load_folder(tmp_path, labeled=True, size=(W, H), channels=3)
    np.testing.assert_array_equal(dom.images[0], prepare_image(np.rot90(_stored(), -1), (W, H), 3))
    assert not np.array_equal(dom.images[0].shape[:2], (H, W))


def _dense(tmp_path, mask_hw):
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    _save(tmp_path / "images" / "f.png")
    m = np.zeros(mask_hw, np.uint8)
    if mask_hw == (H, W):
        m[:, W - 3:] = 1
    else:
        m[W - 3:, :] = 1  # the band at the bottom once the image is turned clockwise
    Image.fromarray(m).save(tmp_path / "masks" / "f.png")
    return load_dense_folder(tmp_path, labeled=True)


def test_dense_masks_stay_on_the_object_whichever_frame_they_were_drawn_in(tmp_path):
    for name, mask_hw in (("shown", (W, H)), ("stored", (H, W))):
        dom = _dense(tmp_path / name, mask_hw)
        assert len(dom) == 1, dom.report.skipped
        s = dom.sample(0)
        assert s.image.shape[:2] == s.mask.shape == mask_hw
        blue = s.image[..., 2] == 200
        assert (blue == (s.mask == 1)).all(), name


def _coco_file(tmp_path, size, box):
    _save(tmp_path / "f.png")
    data = {"images": [{"id": 1, "file_name": "f.png", "width": size[1], "height": size[0]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                             "iscrowd": 0, "segmentation": [[box[0], box[1], box[0] + box[2], box[1],
                                                             box[0] + box[2], box[1] + box[3], box[0], box[1] + box[3]]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


def test_coco_boxes_stay_on_the_object_in_the_frame_the_json_declares(tmp_path):
    cases = {"shown": ((W, H), [0, W - 3, H, 3]), "stored": ((H, W), [W - 3, 0, 3, H])}
    for name, (hw, box) in cases.items():
        (tmp_path / name).mkdir()
        dom = load_coco(_coco_file(tmp_path / name, hw, box))
        s = dom.sample(0)
        assert s.image.shape[:2] == hw, name
        x1, y1, x2, y2 = (int(v) for v in s.boxes[0])
        assert (s.image[y1:y2, x1:x2, 2] == 200).all(), name
        assert (s.image[..., 2] == 200).sum() == (x2 - x1) * (y2 - y1), name
        masks = load_coco_masks(tmp_path / name / "ann.json")
        assert masks.sample(0).mask.shape == hw
    (tmp_path / "other").mkdir()
    dom = load_coco(_coco_file(tmp_path / "other", (7, 7), [0, 0, 2, 2]))
    assert len(dom) == 0
    assert any("the json says 7x7" in r for _, r in dom.report.skipped)


def test_yolo_labels_are_read_in_the_shown_frame(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _save(tmp_path / "images" / "f.png")
    (tmp_path / "classes.txt").write_text("thing\n")
    # shown W x H = 6 wide, 10 tall: the band is the bottom 3 rows, full width
    (tmp_path / "labels" / "f.txt").write_text(f"0 0.5 {(W - 1.5) / W} 1.0 {3 / W}\n")
    s = load_yolo(tmp_path).sample(0)
    x1, y1, x2, y2 = (int(round(float(v))) for v in s.boxes[0])
    assert s.image.shape[:2] == (W, H)
    assert (x1, y1, x2, y2) == (0, W - 3, H, W)
    assert (s.image[y1:y2, x1:x2, 2] == 200).all()
