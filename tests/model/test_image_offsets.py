"""``image_offsets``: an image placed anywhere in the canvas (matterport centres its images).

The padding around it is what the config says (zero after normalising by default), and
proposals and detections stay inside it.
"""

import numpy as np
import tensorflow as tf

from mrcnn import MaskRCNN


def test_offset_image_pads_and_clips_where_it_sits(tiny_config):
    config = tiny_config(DETECTION_MIN_CONFIDENCE=0.0)
    model = MaskRCNN(config)
    rng = np.random.default_rng(0)
    canvas = rng.uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)  # noise in the padding too
    offsets, sizes = np.array([[20, 8]], np.int32), np.array([[70, 100]], np.int32)
    inside = np.zeros((128, 128), bool)
    inside[20:90, 8:108] = True
    # Normalised zero in the padding is the mean colour before normalising.
    by_hand = np.where(inside[None, ..., None], canvas, np.array(config.MEAN_PIXEL, np.float32))
    ours = model.features(tf.constant(canvas), tf.constant(sizes), image_offsets=tf.constant(offsets))
    expected = model.features(tf.constant(by_hand), None)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)

    out = model({"images": tf.constant(canvas), "image_sizes": tf.constant(sizes),
                 "image_offsets": tf.constant(offsets)})
    n = int(out["num_detections"][0])
    boxes = out["boxes"].numpy()[0, :n]
    assert n == config.DETECTION_MAX_INSTANCES  # random weights fill every slot
    assert np.all(boxes[:, [0, 2]] >= 20) and np.all(boxes[:, [0, 2]] <= 90)
    assert np.all(boxes[:, [1, 3]] >= 8) and np.all(boxes[:, [1, 3]] <= 108)
    # Top-left placement is the default: no offsets = offsets of zero.
    plain = model({"images": tf.constant(canvas), "image_sizes": tf.constant(sizes)})
    zero = model({"images": tf.constant(canvas), "image_sizes": tf.constant(sizes),
                  "image_offsets": tf.constant([[0, 0]])})
    np.testing.assert_allclose(plain["boxes"].numpy(), zero["boxes"].numpy(), atol=1e-4)
    np.testing.assert_allclose(plain["scores"].numpy(), zero["scores"].numpy(), atol=1e-5)
