"""Caption sets through OvsegTrainer: the caption mapper for training and testing and the
retrieval evaluator, with a stand-in model that honours the Talk2DINO contract."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import pytest
import torch
from detectron2.data import DatasetCatalog

from ovseg_d2.data import register_all
from ovseg_d2.data.mappers import CaptionDatasetMapper, build_dataset_mapper
from ovseg_d2.evaluation import RetrievalEvaluator

from .caption_stand_in import CaptionStandIn, stand_in_cfg


@pytest.fixture(scope="module")
def registered(shapes_root):
    register_all()
    return shapes_root


def test_caption_sets_get_the_caption_mapper_and_the_retrieval_evaluator(registered):
    from ovseg_d2.engine import OvsegTrainer

    cfg = stand_in_cfg()
    for is_train in (True, False):
        assert isinstance(build_dataset_mapper(cfg, ["ovseg_shapes_train_captions"], is_train), CaptionDatasetMapper)
    assert isinstance(OvsegTrainer.build_evaluator(cfg, "ovseg_shapes_val_captions"), RetrievalEvaluator)
    with pytest.raises(ValueError, match="evaluator types differ"):
        build_dataset_mapper(cfg, ["ovseg_shapes_train_captions", "ovseg_shapes_train_sem_seg"], True)


def test_trainer_trains_and_evaluates_a_caption_set(registered, tmp_path, capsys):
    from ovseg_d2.engine import OvsegTrainer

    cfg = stand_in_cfg(
        "OUTPUT_DIR", str(tmp_path),
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "0",
        "TEST.EVAL_BEFORE_TRAIN", "True",
    )
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    psi_before = [p.detach().clone() for p in trainer.model.psi.parameters()]
    results = trainer.train()
    model = trainer.model
    assert isinstance(model, CaptionStandIn)

    # training saw caption-mapper outputs: 32-px uint8 images with their own captions
    train_captions = {(d["image_id"], d["caption_id"]): d["caption"] for d in DatasetCatalog.get("ovseg_shapes_train_captions")}
    assert len(model.training_inputs) == 2
    for batch in model.training_inputs:
        assert len(batch) == 4
        for x in batch:
            assert x["image"].dtype == torch.uint8 and x["image"].shape == (3, 32, 32)
            assert train_captions[(x["image_id"], x["caption_id"])] == x["caption"]
    assert any(not torch.equal(a, b) for a, b in zip(psi_before, model.psi.parameters()))  # the loss trained psi

    # evaluation (before and after training) went through every val caption once per run
    val = DatasetCatalog.get("ovseg_shapes_val_captions")
    assert len(model.eval_inputs) == 2 * len(val)
    assert all(x["image"].shape == (3, 32, 32) for x in model.eval_inputs)
    metrics = results["retrieval"]
    assert metrics["num_captions"] == len(val) and metrics["num_images"] == len({d["image_id"] for d in val})
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert 0.0 <= metrics[key] <= 100.0
    assert 1.0 <= metrics["t2i_median_rank"] <= metrics["num_images"]
    assert "i2t_R@1" in capsys.readouterr().out  # the before/after table lists the retrieval metrics
