import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from mrcnn import Config  # noqa: E402


def traced_op_counts(fn, *args):
    """collections.Counter of the op types in ``fn``'s traced graph (a tf.function), nested
    functions (the gradient, tf.cond branches) included."""
    import collections

    graph = fn.get_concrete_function(*args).graph
    counts = collections.Counter(op.type for op in graph.get_operations())
    for function in graph._functions.values():  # noqa: SLF001 (the gradient is a nested function)
        counts.update(node.op for node in function.definition.node_def)
    return counts


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


class TinyConfig(Config):
    """A network small enough for unit tests on 2 CPU cores."""

    NAME = "tiny"
    NUM_CLASSES = 4
    BACKBONE = "resnet18"
    BACKBONE_NORM = "gn"
    BACKBONE_BASE_WIDTH = 16
    GROUP_NORM_GROUPS = 8
    FPN_CHANNELS = 32
    FPN_FC_LAYERS_SIZE = 64
    MASK_HEAD_CONV_CHANNELS = 32
    MASK_HEAD_NUM_CONVS = 2
    RPN_ANCHOR_SCALES = (16, 32, 64, 128, 256)
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 2
    PRE_NMS_LIMIT_TRAINING = 500
    POST_NMS_ROIS_TRAINING = 200
    PRE_NMS_LIMIT_INFERENCE = 300
    POST_NMS_ROIS_INFERENCE = 100
    TRAIN_ROIS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 6
    DETECTION_MAX_INSTANCES = 20
    WARMUP_STEPS = 20
    LEARNING_RATE = 0.02
    # The tests' rates were tuned as absolute rates: no linear scaling by the batch.
    LR_REFERENCE_BATCH = None
    GRADIENT_CLIP_NORM = 10.0


@pytest.fixture
def tiny_config():
    return TinyConfig
