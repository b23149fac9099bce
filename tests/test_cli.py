"""`fastseg crf`: the command line's results are dense_crf's, and its errors are messages."""
import numpy as np
import pytest
import torch

import fastseg
from fastseg.cli import main
from fastseg.testing import image_probs

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def files(tmp_path, chelsea):
    image = np.ascontiguousarray(chelsea[:40, :50])
    probs = image_probs(image, 5, seed=1)
    PIL.fromarray(image).save(tmp_path / "image.png")
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "batch_image.npy", image[None])
    np.save(tmp_path / "batch_probs.npy", probs[None])
    return tmp_path, image, probs


def test_refined_probabilities_and_labels(files):
    path, image, probs = files
    want = fastseg.dense_crf(torch.from_numpy(probs), image).numpy()
    assert main(["crf", str(path / "image.png"), str(path / "probs.npy"), "-o",
                 str(path / "q.npy")]) == 0
    assert np.array_equal(np.load(path / "q.npy"), want)
    # -o is the file name, with or without .npy
    assert main(["crf", str(path / "image.png"), str(path / "probs.npy"), "-o",
                 str(path / "labels"), "--labels"]) == 0
    labels = np.load(path / "labels")
    assert labels.dtype == np.uint16 and np.array_equal(labels, want.argmax(0))


def test_big_endian_probs(files):
    path, image, probs = files
    np.save(path / "swapped.npy", probs.astype(">f4"))
    assert main(["crf", str(path / "image.png"), str(path / "swapped.npy"), "-o",
                 str(path / "q.npy")]) == 0
    assert np.array_equal(np.load(path / "q.npy"),
                          fastseg.dense_crf(torch.from_numpy(probs), image).numpy())


def test_batched_probs_give_labels_per_image(files):
    # probs saved straight from a network's (1, C, H, W) softmax: labels over the class axis.
    path, image, probs = files
    assert main(["crf", str(path / "batch_image.npy"), str(path / "batch_probs.npy"), "-o",
                 str(path / "labels.npy"), "--labels"]) == 0
    want = fastseg.dense_crf(torch.from_numpy(probs), image).numpy().argmax(0)
    labels = np.load(path / "labels.npy")
    assert labels.shape == (1,) + want.shape and np.array_equal(labels[0], want)


@pytest.mark.parametrize("case,match", [
    ("missing image", "cannot read image"),
    ("missing probs", "cannot read probs"),
    ("not an image", "cannot read image"),
    ("png as probs", "is not a .npy array file"),
    ("npz probs", "holds several arrays"),
    ("wrong probs shape", "image is 40x50 but probs is"),
    ("missing output folder", "cannot write"),
    ("bad device", "--device must be cpu or cuda"),
    ("meta device", "--device must be cpu or cuda"),
    ("empty probs file", "is not a .npy array file"),
    ("string probs", "can't convert"),
])
def test_errors_are_messages_not_tracebacks(files, capsys, case, match):
    path, image, probs = files
    image_arg, probs_arg, out = str(path / "image.png"), str(path / "probs.npy"), str(path / "q.npy")
    if case == "missing image":
        image_arg = str(path / "nothing.png")
    elif case == "missing probs":
        probs_arg = str(path / "nothing.npy")
    elif case == "not an image":
        (path / "text.png").write_text("not an image")
        image_arg = str(path / "text.png")
    elif case == "png as probs":
        probs_arg = image_arg
    elif case == "npz probs":
        np.savez(path / "probs.npz", probs=probs)
        probs_arg = str(path / "probs.npz")
    elif case == "wrong probs shape":
        np.save(path / "small.npy", probs[:, :20])
        probs_arg = str(path / "small.npy")
    elif case == "missing output folder":
        out = str(path / "no" / "such" / "folder" / "q.npy")
    elif case == "empty probs file":
        (path / "empty.npy").write_bytes(b"")
        probs_arg = str(path / "empty.npy")
    elif case == "string probs":
        np.save(path / "strings.npy", np.array([["a"]]))
        probs_arg = str(path / "strings.npy")
    extra = {"bad device": ["--device", "tpu"], "meta device": ["--device", "meta"]}.get(case, [])
    assert main(["crf", image_arg, probs_arg, "-o", out] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastseg crf: error: ") and match in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_device_without_a_gpu(files, capsys):
    path, _, _ = files
    assert main(["crf", str(path / "image.png"), str(path / "probs.npy"), "-o",
                 str(path / "q.npy"), "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
