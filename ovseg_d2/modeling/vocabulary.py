"""Where a model's vocabulary comes from: data set metadata (``stuff_classes``) or the caller."""
from __future__ import annotations

from detectron2.data import MetadataCatalog

__all__ = ["class_names_of", "default_vocabulary_sources"]


def class_names_of(dataset_name: str) -> list[str]:
    """``stuff_classes`` of a registered data set, with a clear error if it has none."""
    metadata = MetadataCatalog.get(dataset_name)
    names = getattr(metadata, "stuff_classes", None)
    if not names:
        raise KeyError(
            f"data set {dataset_name!r} has no 'stuff_classes' in its metadata; is it registered "
            "(import ovseg_d2) and is it a semantic-segmentation set?"
        )
    return list(names)


def default_vocabulary_sources(cfg) -> tuple[str, str]:
    """(training set, test set) whose class names are the default vocabularies."""
    train = cfg.MODEL.TRAIN_CLASS_NAMES_FROM or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    test = cfg.MODEL.TEST_CLASS_NAMES_FROM or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else train)
    return train, test


class TestVocabularyMixin:
    """``set_test_vocabulary`` and per-input vocabulary grouping, shared by the meta-architectures.

    An input dict may carry its own ``vocabulary`` (a list of names, and optionally
    ``background_by_threshold: True``); otherwise the test vocabulary set by the trainer (per
    data set) applies. With ``background_by_threshold`` the first name is "background" and is
    scored by threshold (``MODEL.BACKGROUND_THRESHOLD``), never text-encoded.

    ``predicts_background_by_threshold`` declares the method's own protocol for a free
    vocabulary (its paper's demo): True adds the threshold background channel by default
    (``OpenVocabPredictor``, ``tools/demo.py``); the baseline and CAT-Seg do not.
    """

    test_class_names: list
    test_background_by_threshold: bool = False
    predicts_background_by_threshold: bool = False

    def set_test_vocabulary(self, class_names, *, background_by_threshold: bool = False) -> None:
        """Vocabulary used at inference when an input carries none."""
        self.test_class_names = list(class_names)
        self.test_background_by_threshold = background_by_threshold

    def set_test_dataset(self, dataset_name: str) -> None:
        """Test vocabulary and protocol of a registered data set: its ``stuff_classes``, its
        ``background_by_threshold`` and whatever :meth:`test_dataset_options` reads from its metadata."""
        metadata = MetadataCatalog.get(dataset_name)
        self.set_test_vocabulary(
            class_names_of(dataset_name),
            background_by_threshold=bool(getattr(metadata, "background_by_threshold", False)),
            **self.test_dataset_options(metadata),
        )

    def test_dataset_options(self, metadata) -> dict:
        """Extra ``set_test_vocabulary`` keyword arguments a method reads from a data set's metadata."""
        return {}

    def group_by_vocabulary(self, batched_inputs: list[dict]) -> dict[tuple, list[int]]:
        """{(vocabulary tuple, background_by_threshold): indices of the inputs using it}."""
        groups: dict[tuple, list[int]] = {}
        for index, x in enumerate(batched_inputs):
            if x.get("vocabulary"):
                key = (tuple(x["vocabulary"]), bool(x.get("background_by_threshold", False)))
            else:
                key = (tuple(self.test_class_names), self.test_background_by_threshold)
            if not key[0]:
                raise ValueError("no test vocabulary: set DATASETS.TEST, call set_test_vocabulary or pass 'vocabulary'")
            groups.setdefault(key, []).append(index)
        return groups
