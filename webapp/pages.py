"""The HTML pages (search, detail, status) and the image bytes: thumbnails from the database,
originals and previews by image id only."""

from __future__ import annotations

import io

from flask import Blueprint, Response, redirect, render_template, request, send_file

from clipdex import status
from clipdex.search import NotFound, check_image_id
from clipdex.vocabulary import IMAGE_FORMATS, MIME_TYPES, SOURCE_KINDS
from webapp import catalog
from webapp.present import detail_json, detail_view
from webapp.query import UploadGone
from webapp.runtime import runtime

bp = Blueprint("pages", __name__)
YEAR = 365 * 24 * 3600
PREVIEW_SIDE = 1600


@bp.get("/")
def search_page():
    rt = runtime()
    with rt.connection() as conn:
        facets = catalog.facets(conn)
    return render_template("search.html", facets=facets, sources=SOURCE_KINDS, formats=IMAGE_FORMATS,
                           strictness=f"{rt.settings.strictness:g}")   # as the slider writes it: 0.5, 0


@bp.get("/images/<int:image_id>")
def detail_page(image_id: int):
    check_image_id(image_id)
    rt = runtime()
    with rt.connection() as conn:
        detail = detail_json(catalog.image_detail(conn, image_id))
        similar = rt.search.similar(conn, image_id).hits
    return render_template("detail.html", image=detail, view=detail_view(detail), similar=similar)


@bp.get("/status")
def status_page():
    with runtime().connection() as conn:
        runs = status.list_runs(conn, limit=20)
        watchers = status.list_watchers(conn)
    return render_template("status.html", runs=runs, watchers=watchers, duration=status.duration,
                           plural=status.plural)


@bp.get("/status/<int:run_id>")
def run_page(run_id: int):
    with runtime().connection() as conn:
        run = catalog.run_status(conn, run_id)
        failures = status.failures(conn, run_id, limit=1000)
    return render_template("run.html", run=run, failures=failures, duration=status.duration,
                           plural=status.plural)


@bp.get("/uploads/<key>.jpg")
def upload_thumbnail(key: str):
    """A small JPEG of an example image kept for searches (the page's chip after a reload)."""
    from PIL import Image

    from clipdex.imaging import DecodeFailure, NotAnImage, decode

    rt = runtime()
    data = rt.uploads.get(key)
    if data is None:
        raise UploadGone("the example image is no longer kept on the server: drop it again")
    try:
        image = decode(data, min_side=96, max_pixels=rt.settings.max_pixels, budget=rt.decode_budget).image
    except (NotAnImage, DecodeFailure):
        raise NotFound("that upload is not an image") from None
    image.thumbnail((96, 96), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    response = Response(out.getvalue(), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=600"
    return response


@bp.get("/thumbnails/<int:image_id>.webp")
def thumbnail(image_id: int):
    check_image_id(image_id)
    with runtime().connection() as conn:
        data = catalog.thumbnail(conn, image_id)
    response = Response(data, mimetype="image/webp")
    # An image id always names the same bytes, so its thumbnail never changes.
    response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable"
    response.set_etag(f"t{image_id}")
    return response.make_conditional(request)


@bp.get("/images/<int:image_id>/original")
def original(image_id: int):
    check_image_id(image_id)
    rt = runtime()
    with rt.connection() as conn:
        found = catalog.open_original(rt.settings, conn, image_id)
    body = io.BytesIO(found.data) if found.data is not None else found.handle
    response = send_file(body, mimetype=MIME_TYPES[found.format], conditional=True,
                         as_attachment=request.args.get("download") == "1", download_name=found.name,
                         etag=f"o{image_id}-{found.size}-{found.mtime_ns}",
                         last_modified=found.mtime_ns / 1e9)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/images/<int:image_id>/preview")
def preview(image_id: int):
    """A large JPEG for the detail page, made from the original; the thumbnail when it is away."""
    from PIL import Image

    from clipdex.files import FileRefused
    from clipdex.imaging import DecodeFailure, NotAnImage, decode
    from clipdex.search import Conflict, NotFound

    check_image_id(image_id)
    rt = runtime()
    try:
        with rt.connection() as conn:
            found = catalog.open_original(rt.settings, conn, image_id)
        image = decode(found.read(rt.settings.max_file_bytes), min_side=PREVIEW_SIDE,
                       max_pixels=rt.settings.max_pixels, budget=rt.decode_budget).image
    except (NotFound, Conflict, NotAnImage, DecodeFailure, FileRefused, OSError):
        return redirect(f"/thumbnails/{image_id}.webp")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    response = Response(out.getvalue(), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
