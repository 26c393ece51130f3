"""Talk2DINO loss vs hand-written loops; negatives gathered across two gloo processes."""
import ovseg_d2  # noqa: F401

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests._talk2dino_gather_worker import gather_worker
from ovseg_d2.modeling.talk2dino_loss import attention_weighted_head_embeddings, talk2dino_contrastive_loss

TEMPERATURE = 0.07


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference_head_embeddings(tokens, logits):
    """v[b][h] = sum_p softmax_p(logits[b][h])[p] * tokens[b][p], by loops."""
    out = []
    for b in range(len(tokens)):
        per_head = []
        for h in range(len(logits[b])):
            m = max(logits[b][h])
            e = [math.exp(x - m) for x in logits[b][h]]
            z = sum(e)
            per_head.append([sum(e[p] / z * tokens[b][p][d] for p in range(len(e))) for d in range(len(tokens[b][0]))])
        out.append(per_head)
    return out


def reference_loss(heads, texts, temperature):
    """Max-over-heads by own caption, then symmetric InfoNCE, by loops on Python floats."""
    n = len(heads)
    t = [_norm(x) for x in texts]
    images = []
    for i in range(n):
        candidates = [_norm(v) for v in heads[i]]
        images.append(max(candidates, key=lambda v: _dot(v, t[i])))
    s = [[_dot(images[i], t[j]) / temperature for j in range(n)] for i in range(n)]
    image_to_text = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    text_to_image = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)) / n
    return (image_to_text + text_to_image) / 2


def test_head_embeddings_match_loops():
    torch.manual_seed(0)
    tokens, logits = torch.randn(2, 5, 3), torch.randn(2, 4, 5) * 3
    expected = torch.tensor(reference_head_embeddings(tokens.tolist(), logits.tolist()))
    torch.testing.assert_close(attention_weighted_head_embeddings(tokens, logits), expected)


def test_loss_matches_loops():
    torch.manual_seed(1)
    heads, texts = torch.randn(6, 3, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    loss = talk2dino_contrastive_loss(heads, texts, temperature=TEMPERATURE)
    assert loss.item() == pytest.approx(reference_loss(heads.tolist(), texts.tolist(), TEMPERATURE), rel=1e-10)
    # the head choice matters: a single-head model with head 0 gives another value
    single = talk2dino_contrastive_loss(heads[:, :1], texts, temperature=TEMPERATURE)
    assert abs(single.item() - loss.item()) > 1e-3


def test_mismatched_batch_is_an_error():
    with pytest.raises(ValueError, match="pairs image i with caption i"):
        talk2dino_contrastive_loss(torch.randn(3, 2, 4), torch.randn(2, 4), temperature=TEMPERATURE)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_equal_the_global_batch(tmp_path):
    torch.manual_seed(2)
    heads, texts = torch.randn(8, 3, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
    mp.spawn(gather_worker, args=(2, _free_port(), heads, texts, TEMPERATURE, str(tmp_path)), nprocs=2, join=True)
    full_text = texts.clone().requires_grad_(True)
    full = talk2dino_contrastive_loss(heads, full_text, temperature=TEMPERATURE)
    full.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], full.detach())  # every process: the global loss
        # the local rows get the global loss's gradient w.r.t. them
        torch.testing.assert_close(result["grad"], full_text.grad[rank * 4 : (rank + 1) * 4])
    # without gathering, each process only sees its 4 negatives: a different loss
    local = talk2dino_contrastive_loss(heads[:4], texts[:4], temperature=TEMPERATURE)
    assert abs(local.item() - full.item()) > 1e-3
