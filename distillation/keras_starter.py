"""The task's master in its own framework: Keras' ImageNet ResNet-152, frozen, global average pooling and a
Dense(6) softmax head, trained with Adam (1e-3), batch 32, on `image_dataset_from_directory` batches of 150x150
images, as the task's starter builds it (reconstructed from its description; the PyTorch `common.Master` is the
same architecture with torchvision-layout weights).

Keras fetches its ImageNet weights from Google's storage on first use; offline they cannot be had, so the PyTorch
master stands in and this code runs with `weights=None` on a few images (the smoke profile), which checks the
code, not the accuracy.
"""
import os
from pathlib import Path

import numpy as np

from distillation.common import IMAGE_SIZE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up notices in the notebook


def image_batches(folder: Path, shuffle: bool = True):
    """The starter's input pipeline: `image_dataset_from_directory`, 150x150, batches of 32, integer labels
    from the sorted class folder names (the order `common.intel_classes` gives)."""
    import tensorflow as tf

    return tf.keras.utils.image_dataset_from_directory(Path(folder), image_size=(IMAGE_SIZE, IMAGE_SIZE),
                                                       batch_size=32, shuffle=shuffle, seed=0)


def linked_subset(folder: Path, target: Path, per_class: int) -> Path:
    """A class-folder copy of `folder` with the first `per_class` images of each class, as symbolic links."""
    for class_folder in sorted(d for d in Path(folder).iterdir() if d.is_dir()):
        (Path(target) / class_folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_folder.glob("*.jpg"))[:per_class]:
            link = Path(target) / class_folder.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return Path(target)


def build_master(weights: str | None = "imagenet", num_classes: int = 6):
    """ResNet152(include_top=False, pooling="avg"), frozen, behind its own caffe-style preprocessing, then
    Dense(num_classes, softmax); compiled with Adam(1e-3) and sparse categorical cross-entropy."""
    import keras

    backbone = keras.applications.ResNet152(include_top=False, weights=weights, pooling="avg",
                                            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    backbone.trainable = False
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = backbone(keras.applications.resnet.preprocess_input(inputs), training=False)
    model = keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(features))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run_starter(train_folder: Path, test_folder: Path, weights: str | None = "imagenet", epochs: int = 20) -> dict:
    """Train the starter's master on all of `train_folder` (as the starter does; the PyTorch master holds out 20%
    for validation) and score it on all of `test_folder`; returns its history, test accuracy and parameter count."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_master(weights)
    train, test = image_batches(train_folder), image_batches(test_folder, shuffle=False)
    history = model.fit(train, epochs=epochs, shuffle=False, verbose=0).history  # the dataset shuffles itself
    labels = np.concatenate([y.numpy() for _, y in test])
    predicted = model.predict(test, verbose=0).argmax(1)
    return {"history": {k: [float(v) for v in values] for k, values in history.items()},
            "test_accuracy": float((predicted == labels).mean()), "parameters": int(model.count_params()),
            "weights": weights or "none (random)"}
