"""Worker of test_talk2dino_loss's two-process test. It imports only torch and the loss file
(loaded by path, not through the ovseg_d2 package), so that spawning processes stays cheap."""
import importlib.util
import os

import torch
import torch.distributed as dist

_LOSS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ovseg_d2", "modeling", "talk2dino_loss.py")


def load_loss_module():
    spec = importlib.util.spec_from_file_location("talk2dino_loss_standalone", _LOSS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gather_worker(rank, world, port, heads, texts, temperature, out_dir):
    """Rank ``rank``'s share of the batch through the loss with gathered negatives; writes its
    loss and the gradient of its caption embeddings to ``out_dir/rank<r>.pt``."""
    loss_module = load_loss_module()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = heads.shape[0] // world
        local_text = texts[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        loss = loss_module.talk2dino_contrastive_loss(
            heads[rank * b : (rank + 1) * b], local_text, temperature=temperature, gather_negatives=True
        )
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local_text.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
