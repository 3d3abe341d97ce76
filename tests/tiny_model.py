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


# A few sentences in Chinese and English: the tiny multilingual tokenizer's whole vocabulary.
MULTILINGUAL_SENTENCES = [
    "海边的日落", "海边的日落非常美丽", "夜晚的粉色保时捷", "一只猫坐在窗台上", "山上的雪和蓝天",
    "孩子们在公园里玩耍", "城市的夜景灯光", "桌子上有一杯咖啡", "我的狗在草地上奔跑", "生日蛋糕和蜡烛",
    "下雨天的街道", "两个人在海边散步", "a sunset at the beach", "a pink porsche at night",
    "a cat sitting on the windowsill", "snow on the mountain and blue sky", "children playing in the park",
    "city lights at night", "a cup of coffee on the table", "my dog running on the grass",
    "birthday cake with candles", "a street on a rainy day", "photo of a red car",
]
MULTILINGUAL_CONTEXT = 32


def write_multilingual_model_folder(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight open_clip model whose text tower is a tiny XLM-RoBERTa (Hugging Face), with
    a Unigram tokenizer trained here on MULTILINGUAL_SENTENCES, all in one ``local-dir:`` folder:
    the same layout as a real multilingual model saved for offline use (config.json and
    tokenizer.json of the tower beside open_clip_config.json and the weights)."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]       # XLM-R's ids 0..4
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(MULTILINGUAL_SENTENCES, trainer=trainers.UnigramTrainer(
        vocab_size=400, special_tokens=specials, unk_token="<unk>", show_progress=False, max_piece_length=8))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=MULTILINGUAL_CONTEXT)
    tokenizer.save_pretrained(str(folder))
    XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=MULTILINGUAL_CONTEXT + 4, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id).save_pretrained(str(folder))
    text_cfg = {"hf_model_name": ".", "hf_tokenizer_name": ".", "hf_proj_type": "mlp",
                "hf_pooler_type": "mean_pooler", "context_length": MULTILINGUAL_CONTEXT}
    model_cfg = {"embed_dim": 64, "text_cfg": text_cfg,
                 "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False, text_cfg={
        **text_cfg, "hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_model_pretrained": False})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
