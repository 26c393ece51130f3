"""Config set-up shared by the command-line tools (train_net, eval_all, ...)."""
from __future__ import annotations

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_ovseg_config

__all__ = ["setup_cfg"]


def setup_cfg(args, *, freeze: bool = True) -> CfgNode:
    """detectron2 defaults + ovseg_d2 keys + ``--config-file`` + ``opts``; logging as detectron2."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if freeze:
        cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ovseg_d2")
    return cfg
