"""RetrievalEvaluator against a brute-force reference, a hand-computed tie case and a simulated
two-process gather."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import numpy as np
import pytest
import torch

import ovseg_d2.evaluation.retrieval as retrieval
from ovseg_d2.evaluation import RetrievalEvaluator


def brute_force(images, captions, owner):
    """Ranks by sorting every list in float64; ties put wrong items first (pessimistic)."""
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    score = [[max(float(unit(h) @ unit(c)) for h in img) for c in captions] for img in images]
    i2t, t2i = [], []
    for i in range(len(images)):
        order = sorted(range(len(captions)), key=lambda j: (-score[i][j], owner[j] == i))
        i2t.append(1 + next(k for k, j in enumerate(order) if owner[j] == i))
    for j in range(len(captions)):
        order = sorted(range(len(images)), key=lambda i: (-score[i][j], i == owner[j]))
        t2i.append(1 + order.index(owner[j]))
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = 100.0 * np.mean(ranks <= k)
        out[f"{name}_mean_rank"] = ranks.mean()
        out[f"{name}_median_rank"] = np.median(ranks)
    return out


def _inputs(owner, captions, images, ids):
    """One (input, output) pair per caption, as the model gives them."""
    return [
        ({"image_id": ids[i], "caption_id": j}, {"head_embeddings": torch.from_numpy(images[i]).float(), "caption_embedding": torch.from_numpy(c).float()})
        for j, (i, c) in enumerate(zip(owner, captions))
    ]


def _random_case(seed=0, num_images=13, heads=3, dim=6):
    rng = np.random.default_rng(seed)
    images = [rng.normal(size=(heads, dim)) for _ in range(num_images)]
    owner = [i for i in range(num_images) for _ in range(rng.integers(1, 4))]
    rng.shuffle(owner)
    # captions near one head of their image, so that the ranks spread over 1..M
    captions = [images[i][rng.integers(heads)] + rng.normal(scale=1.2, size=dim) for i in owner]
    return images, captions, owner


@pytest.mark.parametrize("chunk", [1, 4, 256])
def test_matches_brute_force(chunk):
    images, captions, owner = _random_case()
    ids = [f"img{i:03d}" for i in range(len(images))]
    evaluator = RetrievalEvaluator("hand", distributed=False, chunk=chunk)
    evaluator.reset()
    pairs = _inputs(owner, captions, images, ids)
    for start in range(0, len(pairs), 5):  # several process() calls, images recurring across them
        batch = pairs[start : start + 5]
        evaluator.process([x for x, _ in batch], [y for _, y in batch])
    got = evaluator.evaluate()["retrieval"]
    want = brute_force(images, captions, owner)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < got["i2t_R@1"] < 100 and 0 < got["t2i_R@5"] < 100  # the case is not degenerate
    assert got["rsum"] == pytest.approx(sum(want[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert (got["num_images"], got["num_captions"]) == (len(images), len(captions))


def test_first_embedding_of_an_image_is_kept():
    images, captions, owner = _random_case(seed=1)
    pairs = _inputs(owner, captions, images, list(range(len(images))))
    seen = set()
    for x, y in pairs:  # later inputs of an image carry garbage head embeddings: they must be ignored
        if x["image_id"] in seen:
            y["head_embeddings"] = torch.randn_like(y["head_embeddings"]) * 100
        seen.add(x["image_id"])
    evaluator = RetrievalEvaluator("hand", distributed=False)
    evaluator.process([x for x, _ in pairs], [y for _, y in pairs])
    got = evaluator.evaluate()["retrieval"]
    assert got["i2t_mean_rank"] == pytest.approx(brute_force(images, captions, owner)["i2t_mean_rank"])


def test_ties_count_against_the_model():
    # two identical images with identical captions: each right answer ties with one wrong one -> rank 2
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    caption = np.array([1.0, 0.2])
    evaluator = RetrievalEvaluator("ties", distributed=False)
    pairs = _inputs([0, 1], [caption, caption], [image, image.copy()], ["a", "b"])
    evaluator.process([x for x, _ in pairs], [y for _, y in pairs])
    got = evaluator.evaluate()["retrieval"]
    for d in ("i2t", "t2i"):
        assert got[f"{d}_R@1"] == 0.0 and got[f"{d}_R@5"] == 100.0 and got[f"{d}_mean_rank"] == 2.0 and got[f"{d}_median_rank"] == 2.0


def test_two_processes_gathered(monkeypatch):
    images, captions, owner = _random_case(seed=2)
    pairs = _inputs(owner, captions, images, list(range(len(images))))
    ranks = [RetrievalEvaluator("hand", distributed=True), RetrievalEvaluator("hand", distributed=True)]
    for n, (x, y) in enumerate(pairs):  # alternate captions between the processes: images appear on both
        ranks[n % 2].process([x], [y])
    states = [(e._images, e._captions) for e in ranks]
    assert set(states[0][0]) & set(states[1][0])  # some image is held by both processes
    monkeypatch.setattr(retrieval.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(retrieval.comm, "synchronize", lambda: None)
    monkeypatch.setattr(retrieval.comm, "gather", lambda state, dst=0: states)
    got = ranks[0].evaluate()["retrieval"]
    want = brute_force(images, captions, owner)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_images"] == len(images)


def test_bad_output_shapes_are_a_clear_error():
    evaluator = RetrievalEvaluator("bad", distributed=False)
    with pytest.raises(ValueError, match="head_embeddings"):
        evaluator.process([{"image_id": 0}], [{"head_embeddings": torch.zeros(4), "caption_embedding": torch.zeros(4)}])
