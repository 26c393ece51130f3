"""Checkpointing that survives interruptions and refuses to unpickle arbitrary objects.

``OvsegCheckpointer`` is detectron2's ``DetectionCheckpointer`` with two changes:

* **Atomic saves.** fvcore writes ``model_XXXX.pth`` and ``last_checkpoint`` in place, so a job
  killed (or out of disk) mid-write leaves a truncated checkpoint that ``resume`` then picks up.
  Here every file is written to a temporary file in the same directory, flushed and fsync'ed,
  then renamed over the final name with ``os.replace`` (atomic on POSIX and Windows). A failure
  leaves the previous checkpoint and the previous ``last_checkpoint`` untouched, and no file with
  the final name. Temporary names end in ``.tmp``, so ``get_all_checkpoint_files`` (``*.pth``)
  never lists them.
* **Safe loading.** torch files are read with ``torch.load(..., weights_only=True)``, which only
  reconstructs tensors and plain containers. A trusted file that pickles other objects needs
  ``weights_only=False`` (config: ``MODEL.WEIGHTS_UNSAFE_PICKLE: True``).

detectron2's other formats keep their loaders: ``.pkl`` (detectron2 / Detectron1 model zoo, read
with plain ``pickle`` as detectron2 does: load trusted ``.pkl`` files only) and ``.pyth`` (pycls).
``.safetensors`` files are read with safetensors. A file that holds a bare state dict (no
``{"model": ...}`` wrapper) is accepted as the model's weights.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import secrets
from typing import IO, Any, Callable, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import hooks

from .layouts import detect_layout

__all__ = ["OvsegCheckpointer", "build_checkpointer", "build_periodic_checkpointer_hook", "atomic_write"]

LAST_CHECKPOINT_FILE = "last_checkpoint"  # fvcore's name for the file naming the newest checkpoint
CHECKPOINT_SUFFIX = ".pth"  # fvcore's suffix for saved checkpoints
_TEMP_SUFFIX = ".tmp"
_TEMP_TOKEN_BYTES = 4  # random bytes in a temporary file name (with the pid: unique per writer)
# Formats detectron2's own _load_file handles (model zoo pickles, pycls); passed through untouched.
_DETECTRON2_FORMATS = (".pkl", ".pyth")
_SAFETENSORS_SUFFIX = ".safetensors"
_UNSAFE_PICKLE_KEY = "MODEL.WEIGHTS_UNSAFE_PICKLE"


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX). Best effort: not every OS/filesystem allows
    opening a directory, and the rename itself has already happened atomically."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temporary file next to ``path``, which is
    fsync'ed and then renamed onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was (the old content, or absent). The temporary file is created with ``open(...,
    "xb")`` so it gets the usual permissions (0o666 minus the umask), like a direct write.
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    temp_path = os.path.join(
        directory, f".{base}.{os.getpid()}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}{_TEMP_SUFFIX}"
    )
    try:
        with open(temp_path, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)


class OvsegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves and ``weights_only`` torch loading.

    Args:
        model, save_dir, save_to_disk, checkpointables: as in ``DetectionCheckpointer``;
            ``save_dir`` must be a local directory (atomic rename needs a real filesystem).
        weights_only: read torch files with ``torch.load(weights_only=True)`` (default). False
            allows arbitrary pickled objects: only for trusted files
            (``not cfg.MODEL.WEIGHTS_UNSAFE_PICKLE``).
        strict: a model state that misses keys, has unknown keys or mismatched shapes is an
            error listing them (default), instead of detectron2's silent partial load. Released
            layouts (``layouts.py``) are recognised, logged and renamed first.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        weights_only: bool = True,
        strict: bool = True,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.weights_only = weights_only
        self.strict = strict

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write the model, the checkpointables and ``kwargs`` to ``<save_dir>/<name>.pth``
        atomically, then point ``last_checkpoint`` at it (also atomically)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}{CHECKPOINT_SUFFIX}"
        if os.path.basename(basename) != basename:
            raise ValueError(f"Checkpoint name {name!r} must be a file name, not a path.")
        os.makedirs(self.save_dir, exist_ok=True)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically replace ``<save_dir>/last_checkpoint`` with the given basename."""
        atomic_write(
            os.path.join(self.save_dir, LAST_CHECKPOINT_FILE),
            lambda f: f.write(last_filename_basename.encode("utf-8")),
        )

    # ----------------------------------------------------------------- loading
    def _load_model(self, checkpoint: Any):
        state = checkpoint["model"]
        layout = detect_layout(state)
        covers: tuple[str, ...] = ()
        if layout is not None:
            self.logger.info(f"Recognised checkpoint layout '{layout.name}': {layout.description}")
            checkpoint["model"] = state = layout.convert(state)
            checkpoint["matching_heuristics"] = False
            covers = layout.covers
        if self.strict and not checkpoint.get("__author__", "").startswith("Detectron"):
            self._check_exact_match(state, covers)
        if covers:
            # The file holds only part of the model: the rest keeps its current weights.
            kept = {k: v for k, v in self.model.state_dict().items() if not k.startswith(covers)}
            self.logger.info(
                f"Layout '{layout.name}' covers {list(covers)} only; {len(kept)} other tensors keep the "
                "weights the model was built with"
            )
            checkpoint["model"] = state = {**kept, **state}
        return super()._load_model(checkpoint)

    def _check_exact_match(self, state: Dict[str, Any], covers: tuple[str, ...] = ()) -> None:
        """Raise if the checkpoint's model state does not cover the model exactly (only the
        model keys under the ``covers`` prefixes, when given)."""
        expected = self.model.state_dict()
        if covers:
            expected = {k: v for k, v in expected.items() if k.startswith(covers)}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = sorted(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in set(state) & set(expected)
            if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
        )
        if missing or unexpected or mismatched:
            def listing(title, items):
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                return f"\n  {title} ({len(items)}):\n    {shown}" if items else ""

            raise KeyError(
                "checkpoint does not match the model (strict loading)"
                + listing("missing in checkpoint", missing)
                + listing("unknown to the model", unexpected)
                + listing("shape mismatch", mismatched)
                + "\n  Check that the config builds the architecture the file was trained with; to "
                "load a partial checkpoint on purpose set MODEL.WEIGHTS_STRICT False."
            )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Read a checkpoint file into ``{"model": state_dict, ...other entries}``."""
        if filename.endswith(_DETECTRON2_FORMATS):
            return super()._load_file(filename)
        if filename.endswith(_SAFETENSORS_SUFFIX):
            import safetensors.torch

            loaded: Any = safetensors.torch.load_file(filename, device="cpu")
        else:
            try:
                loaded = torch.load(filename, map_location="cpu", weights_only=self.weights_only)
            except pickle.UnpicklingError as e:
                if not self.weights_only:
                    raise
                raise pickle.UnpicklingError(
                    f"Refused to load {filename}: it contains pickled objects other than tensors and "
                    f"plain containers, and checkpoints are loaded with torch.load(weights_only=True) "
                    f"because unpickling can run arbitrary code. If you trust this file, set "
                    f"{_UNSAFE_PICKLE_KEY} True (OvsegCheckpointer(weights_only=False)). "
                    f"torch said: {e}"
                ) from e
        if not isinstance(loaded, dict):
            raise TypeError(
                f"{filename} holds a {type(loaded).__name__}, not a dict; expected a state dict or "
                '{"model": state_dict, ...}.'
            )
        if "model" not in loaded:
            loaded = {"model": loaded}  # a bare state dict
        return loaded


def build_checkpointer(
    cfg: CfgNode, model: torch.nn.Module, save_dir: str = "", **checkpointables: Any
) -> OvsegCheckpointer:
    """``OvsegCheckpointer`` whose unpickling policy follows ``cfg.MODEL.WEIGHTS_UNSAFE_PICKLE``."""
    return OvsegCheckpointer(
        model,
        save_dir,
        weights_only=not cfg.MODEL.WEIGHTS_UNSAFE_PICKLE,
        strict=cfg.MODEL.WEIGHTS_STRICT,
        **checkpointables,
    )


def build_periodic_checkpointer_hook(cfg: CfgNode, checkpointer: OvsegCheckpointer) -> hooks.PeriodicCheckpointer:
    """detectron2's checkpoint hook saving every ``cfg.SOLVER.CHECKPOINT_PERIOD`` iterations and at
    the end, keeping only the newest ``cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP`` periodic checkpoints
    (0: keep all; ``model_final.pth`` is never deleted).

    Note: fvcore tracks the kept files in memory only, so checkpoints written before a resume are
    not deleted by the resumed run.
    """
    max_to_keep = int(cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP)
    if max_to_keep < 0:
        raise ValueError(
            f"SOLVER.CHECKPOINT_MAX_TO_KEEP must be >= 0 (0 keeps all), got {max_to_keep}."
        )
    return hooks.PeriodicCheckpointer(
        checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=max_to_keep or None
    )
