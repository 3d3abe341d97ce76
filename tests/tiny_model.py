"""Random-weight open_clip models written as ``local-dir:`` folders, for tests and benchmarks: no
weights can be downloaded on the machines that run them, and a folder written this way loads
through exactly the same code as a real model."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_folder(folder: Path, model_cfg: dict, *, seed: int = 0,
                       preprocess_cfg: dict | None = None) -> Path:
    """Writes a random-weight open_clip model as a ``local-dir:`` folder (config + safetensors).

    Tests and benchmarks use it: no weights can be downloaded on the machines that run them, and a
    folder written this way loads through exactly the same code as a real model.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg or {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


TINY_MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
