"""Models side by side: what a multilingual text tower costs next to open_clip's English one, and
what adding a second model to an indexed library does again.

1. Query encoding on this CPU: p50 of one short query (batch 1, "a dog on the beach" and
   "海边的日落" in turn), random weights at real size, loaded through clipdex's own loader:
   ``ViT-B-32`` (open_clip's text transformer, English, the default before; CLIPDEX_PRETRAINED=none) and
   ``xlm-roberta-base-ViT-B-32`` (an XLM-RoBERTa base text tower, as open_clip builds it, in a
   local-dir: folder: open_clip's config for it, XLM-R base's Hugging Face config written out by
   hand, and a tokenizer trained here: speed does not depend on what the vocabulary holds), and
   ``nllb-clip-base`` the same way (NLLB-200 distilled 600M's encoder as the text tower).
2. Memory: the resident size of this process after loading one model, then the other (what the
   web process holds once a Chinese query has gone to the second model).
3. A second model for an indexed library: ``clipdex index`` of N camera-like JPEGs with a tiny
   English model (everything: read, hash, decode, metadata, thumbnail, embed, write), then
   ``clipdex index --model <a tiny multilingual one>`` over the same folder (read, hash, decode,
   embed, write the vectors; no thumbnail, no image or location row).

    python -m bench.models [--photos 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Report, peak_rss_mib, percentile, scratch_folder

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["a dog on the beach", "海边的日落"]

# Hugging Face's xlm-roberta-base config.json (the fields that shape the network).
XLM_ROBERTA_BASE = {
    "model_type": "xlm-roberta", "architectures": ["XLMRobertaForMaskedLM"], "vocab_size": 250002,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-05,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}


# Hugging Face's facebook/nllb-200-distilled-600M config.json (nllb-clip-base keeps its encoder).
NLLB_200_DISTILLED_600M = {
    "model_type": "m2m_100", "architectures": ["M2M100ForConditionalGeneration"], "vocab_size": 256206,
    "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
    "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
    "activation_function": "relu", "max_position_embeddings": 1024, "scale_embedding": True,
    "is_encoder_decoder": True, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    "decoder_start_token_id": 2,
}


def hf_tower_folder(folder: Path, open_clip_name: str, hf_config: dict) -> Path:
    """One of open_clip's models with a Hugging Face text tower, as a local-dir: folder without
    weights (random at real size)."""
    import open_clip
    from tests.tiny_model import write_multilingual_model_folder

    if (folder / "open_clip_config.json").exists():
        return folder
    tokenizer_source = write_multilingual_model_folder(folder.parent / "tokenizer-source")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_source / name, folder / name)
    (folder / "config.json").write_text(json.dumps(hf_config))
    model_cfg = open_clip.get_model_config(open_clip_name)
    model_cfg["text_cfg"].update(hf_model_name=".", hf_tokenizer_name=".")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return folder


def encode_p50(settings, repeats: int) -> tuple[float, float, float, int]:
    """(p50 ms, p95 ms, load seconds, text tower parameters) for one query at a time."""
    from clipdex.model import load_model

    start = time.perf_counter()
    model = load_model(settings)
    loaded = time.perf_counter() - start
    for query in QUERIES:
        model.encode_texts([query])
    timings = []
    for n in range(repeats):
        start = time.perf_counter()
        model.encode_texts([QUERIES[n % len(QUERIES)]])
        timings.append(1000 * (time.perf_counter() - start))
    # The text tower: everything but the image tower (open_clip's CLIP keeps its text parts loose).
    params = (sum(p.numel() for p in model._model.parameters())
              - sum(p.numel() for p in model._model.visual.parameters()))
    return percentile(timings, 50), percentile(timings, 95), loaded, params


def index_rate(env: dict, folder: Path, *extra: str) -> tuple[float, str]:
    """Files per second of one `clipdex index` run, as it reports them, and its summary line."""
    out = subprocess.run([sys.executable, "-m", "clipdex.cli", "index", str(folder), *extra], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=3600, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("indexed "))
    return float(re.search(r"([\d.]+) files/s", line).group(1)), line


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="tiny models only, 6 photos")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from bench.corpus import make_corpus
    from clipdex.config import Settings
    from clipdex.model import ModelSpec
    from tests.tiny_model import TINY_MODEL_CFG, write_model_folder, write_multilingual_model_folder

    with scratch_folder("clipdex-bench-models-") as work:
        report = Report("Models side by side: query encoding, memory, a second model's vectors",
                        "ViT-B-32 (English, the default before)")
        tiny, tiny_ml = (write_model_folder(work / "tiny", TINY_MODEL_CFG),
                         write_multilingual_model_folder(work / "tiny-ml"))
        if args.smoke:
            english = Settings(model=f"local-dir:{tiny}", device="cpu")
            multilingual = Settings(model=f"local-dir:{tiny_ml}", device="cpu")
            args.photos, args.repeats = 6, 4
        else:
            english = Settings(model="ViT-B-32", pretrained="none", device="cpu")
            multilingual = Settings(model="local-dir:" + str(hf_tower_folder(
                work / "xlm-roberta-base-ViT-B-32", "xlm-roberta-base-ViT-B-32", XLM_ROBERTA_BASE)), device="cpu")
        rss_start = peak_rss_mib()
        en = encode_p50(english, args.repeats)
        rss_one = peak_rss_mib()
        ml = encode_p50(multilingual, args.repeats)
        rss_two = peak_rss_mib()
        names = (ModelSpec.from_settings(english).key(), "xlm-roberta-base-ViT-B-32 (random weights)"
                 if not args.smoke else ModelSpec.from_settings(multilingual).key())
        report.add("query encoding p50, one short query", ml[0], en[0], unit="ms", higher_is_better=False,
                   note=f"{names[1]} against {names[0]}; p95 {ml[1]:.1f} / {en[1]:.1f} ms; torch threads: all cores")
        report.add("text tower parameters", f"{ml[3] / 1e6:.0f} M", f"{en[3] / 1e6:.0f} M")
        report.add("model load", ml[2], en[2], unit="s", higher_is_better=False, note="random weights: no file read")
        report.add("process memory with one model, then both (peak RSS)", rss_two, rss_one, unit="MiB",
                   higher_is_better=False, note=f"{rss_start:.0f} MiB before either")
        if not args.smoke:
            nllb = encode_p50(Settings(model="local-dir:" + str(hf_tower_folder(
                work / "nllb-clip-base", "nllb-clip-base", NLLB_200_DISTILLED_600M)), device="cpu"), args.repeats)
            report.add("query encoding p50, nllb-clip-base (random weights)", nllb[0], en[0], unit="ms",
                       higher_is_better=False, note=f"against {names[0]}; p95 {nllb[1]:.1f} ms; text tower "
                                                    f"{nllb[3] / 1e6:.0f} M parameters; load {nllb[2]:.1f} s")

        photos = work / "photos"
        make_corpus(photos, {"camera_jpeg": args.photos})
        env = Settings(home=work / "home", model=f"local-dir:{tiny}", device="cpu", ocr=False).child_environ()
        first, first_line = index_rate(env, photos)
        second, second_line = index_rate(env, photos, "--model", f"local-dir:{tiny_ml}")
        report.add("indexing a second model's vectors, files/s", second, first, unit="files/s",
                   note=f"{args.photos} 12 MP JPEGs, tiny models (the model's own cost left out); first run: "
                        f"{first_line!r}; second: {second_line!r}")
        report.emit(args.json)
        return report


if __name__ == "__main__":
    main()
