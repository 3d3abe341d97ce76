"""The JSON API: every action of the pages, for scripts too. Documented in README and
webapp/static/openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app, request, send_from_directory

from clipdex import status
from webapp import catalog
from clipdex.search import check_image_id
from webapp.present import detail_json, hit_json, page_json
from webapp.query import search_request
from webapp.runtime import runtime

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.route("/search", methods=["GET", "POST"])
def search_api():
    rt = runtime()
    search = search_request(request, rt.settings.upload_max_bytes, rt.uploads)
    with rt.connection() as conn:
        body = page_json(rt.search.search(conn, search.request))
        # Each image uploaded now: the key that names it in a later request, and its id when those
        # very bytes are indexed (an address that says like=<id> lasts longer than an upload).
        body["uploads"] = [{"key": key, "image_id": catalog.image_id_of(conn, data)}
                           for key, data in search.new_uploads]
    return body


@bp.get("/images/<int:image_id>")
def image_api(image_id: int):
    check_image_id(image_id)
    rt = runtime()
    with rt.connection() as conn:
        detail = detail_json(catalog.image_detail(conn, image_id))
        similar = rt.search.similar(conn, image_id)
    detail["similar"] = [hit_json(h) for h in similar.hits if h.id != image_id]
    return detail


@bp.get("/images/<int:image_id>/similar")
def similar_api(image_id: int):
    check_image_id(image_id)
    rt = runtime()
    with rt.connection() as conn:
        return page_json(rt.search.similar(conn, image_id))


@bp.get("/filters")
def filters_api():
    with runtime().connection() as conn:
        return catalog.facets(conn)


@bp.get("/status")
def status_api():
    with runtime().connection() as conn:
        return {"runs": [run.to_dict() for run in status.list_runs(conn, limit=20)]}


@bp.get("/status/<int:run_id>")
def run_api(run_id: int):
    with runtime().connection() as conn:
        return catalog.run_status(conn, run_id).to_dict()


@bp.get("/status/<int:run_id>/failures")
def failures_api(run_id: int):
    with runtime().connection() as conn:
        rows = status.failures(conn, run_id if run_id <= 2**63 - 1 else -1, limit=1000)
    return {"failures": [{"root": f.root, "path": f.path, "source": f.source, "stage": f.stage,
                          "reason": f.reason, "at": f.created_at.isoformat()} for f in rows]}


@bp.get("/openapi.json")
def openapi():
    return send_from_directory(current_app.static_folder, "openapi.json", mimetype="application/json")
