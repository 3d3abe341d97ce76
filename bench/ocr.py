"""Text in photos: how well and how fast clipdex reads it, on a generated corpus.

Text images in three kinds — phone screenshots (1170×2532, six lines of Chinese, English and
mixed text), receipts, and signs on a photo-like textured background (blurred, tilted, rotated 0°,
90° or 180°) — each carrying one phrase to search for (a Chinese phrase, an English one, or a code
such as MU5137 or an 8-digit invoice number), plus text-free photos (colour gradients, noise and
shapes) at a phone camera's size. Every file goes through the engine twice, decoded as the
indexer decodes it: with the gate (what clipdex runs) and without
it (the baseline: full detection and recognition on every photo), measured in the same run.

Reported: character accuracy per kind (1 − edit distance / length, on the folded text without
spaces); whether `--text PHRASE` finds the image (the same word and phrase rules as the SQL
filter, applied to the engine's output); false matches on text-free photos; photos per second on
the mix, with and without the gate; text images the gate lost.

    python -m bench.ocr [--text-images 90] [--textless 210] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench.report import Report
from clipdex.search.words import compact, query_words, text_words
from indexer.ocr import OcrEngine

FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
SC = 2
CHINESE = ["海边的日落", "星巴克咖啡", "无线网络密码", "会议改到下午三点", "北京南站", "请在三号窗口取票", "生日快乐",
           "今日特价菜单", "停车场入口", "地铁二号线", "营业时间", "发票抬头", "外卖已送达", "收款成功", "登机口"]
ENGLISH = ["boarding pass", "total amount due", "free wifi password", "meeting moved to friday", "exit only",
           "happy birthday", "daily specials", "no parking", "departure gate", "order delivered", "thank you",
           "opening hours", "payment received", "platform four", "fresh coffee"]


def phrase(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(CHINESE)
    if kind == 1:
        return rng.choice(ENGLISH)
    if kind == 2:
        return f"{rng.choice(['MU', 'CA', 'CZ', 'UA', 'LH'])}{rng.randrange(1000, 9999)}"
    return f"{rng.randrange(10**7, 10**8)}"


def filler(rng: random.Random) -> str:
    return rng.choice([rng.choice(CHINESE), rng.choice(ENGLISH).title(), f"¥{rng.randrange(5, 999)}.00",
                       f"{rng.randrange(10, 23)}:{rng.randrange(10, 59)}"])


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT), size, index=SC)


def screenshot(rng: random.Random, target: str) -> tuple[Image.Image, list[str]]:
    image = Image.new("RGB", (1170, 2532), (246, 246, 246))
    draw = ImageDraw.Draw(image)
    lines = [filler(rng) for _ in range(6)]
    lines[rng.randrange(6)] = target
    for n, line in enumerate(lines):
        y = 220 + n * 330
        draw.rounded_rectangle((60, y - 30, 1110, y + 110), 30, fill=(255, 255, 255) if n % 2 else (160, 230, 120))
        draw.text((100, y), line, fill=(20, 20, 20), font=font(56))
    return image, lines


def receipt(rng: random.Random, target: str) -> tuple[Image.Image, list[str]]:
    image = Image.new("RGB", (700, 1100), (252, 250, 240))
    draw = ImageDraw.Draw(image)
    lines = [filler(rng) for _ in range(8)]
    lines[rng.randrange(8)] = target
    for n, line in enumerate(lines):
        draw.text((50, 60 + n * 120), line, fill=(40, 40, 40), font=font(38))
    return image, lines


def textured(rng: random.Random, size=(1600, 1200)) -> Image.Image:
    """A photo-like background: smooth colour, noise, a few soft shapes."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.clip(255 * (rng.random() * x + rng.random() * y + rng.random() * 0.3), 0, 255)
                     for _ in range(3)], -1)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, base.shape)
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(2, 6)):
        cx, cy, r = rng.randrange(w), rng.randrange(h), rng.randrange(60, 300)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image.filter(ImageFilter.GaussianBlur(3))


def sign(rng: random.Random, target: str) -> tuple[Image.Image, list[str]]:
    image = textured(rng)
    board = Image.new("RGB", (900, 260), rng.choice([(250, 250, 250), (20, 60, 140), (200, 30, 30)]))
    colour = (20, 20, 20) if board.getpixel((0, 0))[0] > 200 and board.getpixel((0, 0))[2] > 200 else (255, 255, 255)
    ImageDraw.Draw(board).text((40, 70), target, fill=colour, font=font(rng.choice([56, 72, 96])))
    board = board.rotate(rng.uniform(-8, 8), expand=True, fillcolor=(128, 128, 128))
    image.paste(board, (rng.randrange(50, 600), rng.randrange(50, 800)))
    image = image.filter(ImageFilter.GaussianBlur(rng.choice([0, 0.8, 1.5])))
    return image.rotate(rng.choice([0, 0, 90, 180]), expand=True), [target]


KINDS = {"screenshot": screenshot, "receipt": receipt, "sign": sign}


def matches(query: str, text: str) -> bool:
    """What the SQL `text` filter decides, on the engine's output."""
    words = set(text_words(text))
    for word, prefix in query_words(query):
        if not (word in words or (prefix and any(w.startswith(word) for w in words))):
            return False
    return compact(query) in compact(text)


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def camera_photo(rng: random.Random) -> Image.Image:
    """A text-free photo at a phone camera's size (4032×3024), as the indexer meets it."""
    return textured(rng, (1008, 756)).resize((4032, 3024), Image.Resampling.BILINEAR)


def read_all(engine: OcrEngine, files: list[bytes]) -> tuple[list[str], list[bool], list[float]]:
    """Each file as the indexer reads it: decoded upright at OCR resolution, then read."""
    texts, gated, seconds = [], [], []
    for data in files:
        start = time.perf_counter()
        result = engine.read_bytes(data, max_pixels=250_000_000)
        seconds.append(time.perf_counter() - start)
        texts.append(result.text)
        gated.append(result.gated)
    return texts, gated, seconds


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text-images", type=int, default=90)
    parser.add_argument("--textless", type=int, default=210)
    parser.add_argument("--smoke", action="store_true", help="3 text images, 3 text-free photos")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.text_images, args.textless = 3, 3
    rng = random.Random(7)
    corpus = []          # (kind, file bytes, expected lines, target phrase)
    for n in range(args.text_images):
        kind = list(KINDS)[n % len(KINDS)]
        target = phrase(rng)
        image, lines = KINDS[kind](rng, target)
        corpus.append((kind, encoded(image, "PNG" if kind == "screenshot" else "JPEG"), lines, target))
    for _ in range(args.textless):
        corpus.append(("text-free", encoded(camera_photo(rng), "JPEG"), [], None))
    rng.shuffle(corpus)
    files = [c[1] for c in corpus]

    gated_engine, full_engine = OcrEngine(use_gate=True), OcrEngine(use_gate=False)
    gated_engine.read_bytes(files[0], max_pixels=250_000_000)    # load both before timing
    full_engine.read_bytes(files[0], max_pixels=250_000_000)
    texts, was_gated, gated_times = read_all(gated_engine, files)
    full_texts, _, full_times = read_all(full_engine, files)

    # What reading a photo again costs the OCR stage besides its decode (which OCR needs at its
    # own resolution anyway): hashing the bytes to check they are the ones indexed.
    start = time.perf_counter()
    for data in files:
        hashlib.sha256(data).digest()
    hashing = time.perf_counter() - start

    share = args.textless / len(corpus)
    report = Report(f"OCR: {args.text_images} text images (screenshots 1170×2532 PNG, receipts and signs as JPEG) "
                    f"and {args.textless} text-free 4032×3024 JPEG photos ({share:.0%}); clipdex = with the gate",
                    "no gate")
    report.add("photos per second on the mix", len(files) / sum(gated_times), len(files) / sum(full_times),
               unit="/s", note=f"{gated_engine.name}, one process, decode included, "
                               f"{sum(gated_times):.1f} s against {sum(full_times):.1f} s")
    for label, keep in (("text-free photos", lambda kind: kind == "text-free"),
                        ("text images", lambda kind: kind != "text-free")):
        chosen = [i for i, c in enumerate(corpus) if keep(c[0])]
        if chosen:
            report.add(f"{label} per second", len(chosen) / sum(gated_times[i] for i in chosen),
                       len(chosen) / sum(full_times[i] for i in chosen), unit="/s")
    for kind in KINDS:
        rows = [(c, t, ft) for c, t, ft in zip(corpus, texts, full_texts) if c[0] == kind]
        if not rows:
            continue
        accuracy = np.mean([max(0.0, 1 - edit_distance(compact(" ".join(c[2])), compact(ft)) / max(1, len(compact(" ".join(c[2])))))
                            for c, _t, ft in rows])
        found = sum(matches(c[3], t) for c, t, _ in rows) / len(rows)
        found_full = sum(matches(c[3], ft) for c, _t, ft in rows) / len(rows)
        report.add(f"{kind}: character accuracy", float(accuracy), note=f"{len(rows)} images, read in full")
        report.add(f"{kind}: phrase found by --text", float(found), float(found_full),
                   note="share of images whose own phrase matches")
    report.add("checking the bytes again (SHA-256), share of the gated OCR time", hashing / sum(gated_times),
               note=f"{1000 * hashing / len(files):.1f} ms a photo, {sum(map(len, files)) / len(files) / 1e6:.1f} MB "
                    "on average; the read itself comes from the page cache right after indexing")
    # Phrase retrieval over the whole corpus, each distinct phrase once as a `--text` query: the
    # relevant photos are those whose rendered lines hold it (phrases recur, also as filler), the
    # retrieved ones those whose OCR text matches; recall@10 counts false matches as ranked first.
    expected = [" \n".join(c[2]) for c in corpus]
    for kind in KINDS:
        queries = sorted({c[3] for c in corpus if c[0] == kind})
        recalls = []
        for query in queries:
            relevant = {i for i, lines in enumerate(expected) if lines and matches(query, lines)}
            retrieved = {i for i, text in enumerate(texts) if text and matches(query, text)}
            found = min(len(relevant & retrieved), max(0, 10 - len(retrieved - relevant)))
            recalls.append(found / min(10, len(relevant)))
        report.add(f"{kind}: phrase recall@10", float(np.mean(recalls)),
                   note=f"{len(queries)} distinct phrases; lowest {min(recalls):.2f}")
    text_rows = [(c, g) for c, g in zip(corpus, was_gated) if c[0] != "text-free"]
    lost = sum(g for _c, g in text_rows)
    report.add("text images the gate skipped", lost, note=f"of {len(text_rows)}")
    textless = [t for c, t in zip(corpus, texts) if c[0] == "text-free"]
    targets = [c[3] for c in corpus if c[3]]
    false = sum(any(matches(q, t) for q in targets) for t in textless if t)
    report.add("text-free photos matching any phrase", false,
               note=f"{sum(bool(t) for t in textless)} of {len(textless)} had any text read")
    report.emit(args.json)
    return report


if __name__ == "__main__":
    main()
