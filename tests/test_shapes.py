"""The captioned shapes data set, its tokenizer and the attribute classifier's helpers (lesson 08)."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.data.shapes import COLOURS, POSITIONS, SHAPES, Tokenizer, make_shapes, parse_caption

GREEN_TRIANGLE = [{"colour": "green", "shape": "triangle"}]


def test_dataset_is_deterministic_from_its_seed():
    a, b, c = make_shapes(40, 16, seed=3), make_shapes(40, 16, seed=3), make_shapes(40, 16, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (40, 3, 16, 16) and a.images.min() >= -1 and a.images.max() <= 1


def test_captions_match_labels_and_pixels():
    d = make_shapes(300, 32, seed=0)
    for i, text in enumerate(d.captions):
        assert parse_caption(text) == tuple(d.labels[i].tolist())
    # the pixel at the shape's centre is fully inside it, so it has exactly the caption's colour
    cx, cy = d.centre[:, 0].long(), d.centre[:, 1].long()
    centre_rgb = d.images[torch.arange(len(d)), :, cy, cx]  # (N, 3)
    assert torch.equal(centre_rgb.argmax(1), d.colour)
    assert torch.allclose(centre_rgb, td.data.shapes._RGB[d.colour])
    # the caption's position is the quadrant of the centre
    right, bottom = (d.centre[:, 0] > 16).long(), (d.centre[:, 1] > 16).long()
    assert torch.equal(2 * bottom + right, d.position)


def test_drawn_areas_match_each_shape_formula():
    """Circle pi r^2, square (1.7 r)^2, triangle (3 sqrt3 / 4)(1.2 r)^2: a swapped mask or a wrong size fails."""
    d = make_shapes(90, 32, seed=1)
    images = td.data.shapes.render(d.shape, d.colour, d.centre, d.radius, 32, supersample=16)  # finer edges
    assert torch.allclose(images, d.images, atol=0.5)  # the same pictures as the data set's (4x4 antialiasing)
    cover = (images - td.data.shapes._BACKGROUND) / (td.data.shapes._RGB[d.colour][:, :, None, None] - td.data.shapes._BACKGROUND)
    area = cover[:, 0].flatten(1).sum(1)  # channel 0 differs from the background for every colour
    r = d.radius
    want = torch.stack([math.pi * r**2, (1.7 * r) ** 2, 3 * math.sqrt(3) / 4 * (1.2 * r) ** 2])[d.shape, torch.arange(90)]
    torch.testing.assert_close(area, want, rtol=0.03, atol=0.3)


def test_held_out_combinations_are_excluded_and_only_selects_them():
    train = make_shapes(400, 16, seed=0, exclude=GREEN_TRIANGLE)
    green, tri = COLOURS.index("green"), SHAPES.index("triangle")
    assert not ((train.colour == green) & (train.shape == tri)).any()
    assert (train.colour == green).any() and (train.shape == tri).any()  # the words are still seen separately
    held = make_shapes(50, 16, seed=0, only=GREEN_TRIANGLE)
    assert ((held.colour == green) & (held.shape == tri)).all()
    assert set(held.position.tolist()) == set(range(len(POSITIONS)))
    assert len(td.data.shapes.combos(GREEN_TRIANGLE)) == 36 - 4


def test_bad_dataset_arguments_raise():
    with pytest.raises(ValueError, match="n must lie in 1.."):
        make_shapes(0)
    with pytest.raises(ValueError, match="seed must be an int"):
        make_shapes(4, seed="0")
    with pytest.raises(ValueError, match="chunk must lie in 1.."):
        make_shapes(4, chunk=0)
    with pytest.raises(TypeError, match="only must be a list of rules"):
        make_shapes(4, only=3)
    with pytest.raises(ValueError, match="shape must lie in 0..2"):
        td.data.shapes.caption(7, 0, 0)
    with pytest.raises(ValueError, match="position must be an int"):
        td.data.shapes.caption(0, 0, None)
    with pytest.raises(TypeError, match="text must be a caption string"):
        parse_caption(None)
    shape, colour = torch.tensor([0, 1]), torch.tensor([0, 2])
    centre, radius = torch.tensor([[8.0, 8.0], [4.0, 4.0]]), torch.tensor([3.0, 2.0])
    with pytest.raises(ValueError, match="colour must have batch size 2"):
        td.data.shapes.render(shape, colour[:1], centre, radius, 16)
    with pytest.raises(ValueError, match="shape must hold indices in 0..2"):
        td.data.shapes.render(shape + 5, colour, centre, radius, 16)
    with pytest.raises(ValueError, match="colour must hold integer indices"):
        td.data.shapes.render(shape, colour + 0.5, centre, radius, 16)
    with pytest.raises(ValueError, match="radius must be finite"):
        td.data.shapes.render(shape, colour, centre, radius * float("nan"), 16)
    with pytest.raises(ValueError, match="supersample must be an int"):
        td.data.shapes.render(shape, colour, centre, radius, 16, supersample=2.5)
    with pytest.raises(ValueError, match="max_len must be an int"):
        Tokenizer(max_len="8")
    with pytest.raises(TypeError, match="captions must be a string or a list of strings"):
        Tokenizer().encode(None)
    clf = td.data.shapes.attribute_classifier(4)
    with pytest.raises(ValueError, match=r"images must be images of shape \(B, 3, H, W\)"):
        td.data.shapes.classifier_loss(clf, (torch.zeros(2, 1, 16, 16), torch.zeros(2, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="model must return logits of shape"):
        td.data.shapes.classifier_loss(lambda x: x.flatten(1)[:, :3], (torch.zeros(2, 3, 16, 16),
                                                                       torch.zeros(2, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="divisible by 4"):
        make_shapes(4, 18)
    with pytest.raises(ValueError, match="unknown colour"):
        make_shapes(4, only=[{"colour": "purple"}])
    with pytest.raises(ValueError, match="may only name"):
        td.data.shapes.combos(exclude=[{"size": "big"}])
    with pytest.raises(ValueError, match="no .* combination is left"):
        td.data.shapes.combos(exclude=[{}])
    with pytest.raises(ValueError, match="a caption reads"):
        parse_caption("red circle")


def test_tokenizer_round_trip_padding_and_mask():
    tok = Tokenizer(max_len=8)
    caps = ["a red circle top left", "a blue triangle bottom right", ""]
    ids, mask = tok.encode(caps)
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert tok.decode(ids, mask) == caps
    assert mask.sum(1).tolist() == [6, 6, 1]  # <bos> + words
    assert (ids[:, 0] == tok.index["<bos>"]).all() and (ids[~mask] == tok.index["<pad>"]).all()
    assert tok.decode(ids) == caps  # without a mask the pads are dropped too


def test_tokenizer_rejects_unknown_and_too_long_input():
    tok = Tokenizer(max_len=6)
    with pytest.raises(ValueError, match="unknown word"):
        tok.encode("a purple circle top left")
    with pytest.raises(ValueError, match="unknown word"):
        tok.encode("<pad>")
    with pytest.raises(ValueError, match="at most 5"):
        tok.encode("a red circle top left left")
    with pytest.raises(ValueError, match="must lie in"):
        tok.decode(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer(["a", "a"])


def test_attribute_accuracy_and_classifier_helpers():
    target = torch.tensor([[0, 1, 2], [1, 1, 3], [2, 0, 0], [0, 2, 1]])
    pred = torch.tensor([[0, 1, 2], [1, 0, 3], [2, 0, 1], [1, 2, 1]])
    acc = td.data.shapes.attribute_accuracy(pred, target)
    assert acc == {"shape": 0.75, "colour": 0.75, "position": 0.75, "all": 0.25}
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        td.data.shapes.attribute_accuracy(pred[:, :2], target[:, :2])
    d = make_shapes(8, 16, seed=0)
    clf = td.data.shapes.attribute_classifier(8)
    loss = td.data.shapes.classifier_loss(clf, (d.images, d.labels))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in clf.parameters())  # all three heads are trained by the loss
    assert clf.features(d.images).shape == (8, 16 + 5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clf(d.images[:, :1])
    pred = td.data.shapes.predict_attributes(clf, d.images, batch_size=3)
    assert pred.shape == (8, 3) and (pred < torch.tensor(td.data.shapes.NUM_ATTRIBUTES)).all()


def test_attribute_classifier_finds_the_shape():
    """The classifier's fixed front end: the centroid is the shape's centre, the colour its RGB, the crop centred."""
    d = make_shapes(60, 32, seed=2, only=[{"shape": "circle"}, {"shape": "square"}])  # symmetric: centroid = centre
    clf = td.data.shapes.attribute_classifier(8)
    centre, colour = clf.locate(d.images)
    pixel = (centre + 1) / 2 * 31 + 0.5  # [-1, 1] (pixel centres) -> pixel units
    torch.testing.assert_close(pixel, d.centre, atol=0.25, rtol=0)
    assert torch.equal(colour.argmax(1), d.colour)
    crop = clf.crop(d.images, centre)
    assert crop.shape == (60, 1, 16, 16)
    w = crop[:, 0] / crop[:, 0].sum((1, 2), keepdim=True)
    u = torch.arange(16.0)
    torch.testing.assert_close((w.sum(1) * u).sum(1), torch.full((60,), 7.5), atol=0.5, rtol=0)  # centred in x
    torch.testing.assert_close((w.sum(2) * u).sum(1), torch.full((60,), 7.5), atol=0.5, rtol=0)  # and in y


def test_predict_attributes_leaves_the_models_mode_alone():
    clf = td.data.shapes.attribute_classifier(4).train()
    d = make_shapes(4)
    pred = td.data.shapes.predict_attributes(clf, d.images)
    assert pred.shape == (4, 3) and clf.training and all(m.training for m in clf.modules())
