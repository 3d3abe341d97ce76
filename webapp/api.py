"""The JSON API: every action of the pages, for scripts too. Documented in README and
webapp/static/openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app, request, send_from_directory

from clipdex import catalog, status
from clipdex.model import LazyModel
from clipdex.search import Page, QuerySpec, check_image_id, search
from webapp.query import SearchRequest, parse_search
from webapp.runtime import runtime

bp = Blueprint("api", __name__, url_prefix="/api")
SIMILAR = 24


def run_search(sr: SearchRequest) -> Page:
    rt = runtime()
    with rt.connection() as conn:
        return search(rt.database, conn, rt.model_key, spec=sr.spec, model=LazyModel(rt.settings),
                      filters=sr.filters, limit=sr.limit, cursor=sr.cursor,
                      max_pixels=min(rt.settings.max_pixels, 100_000_000), ef_search=rt.settings.ef_search,
                      decode_budget=rt.decode_budget)


def similar(image_id: int, limit: int = SIMILAR) -> Page:
    return run_search(SearchRequest(QuerySpec(image_ids=[(image_id, 1.0)]), filters=None, limit=limit,
                                    cursor=None))


@bp.route("/search", methods=["GET", "POST"])
def search_api():
    sr = parse_search(request, runtime().settings.upload_max_bytes)
    return run_search(sr).to_dict()


@bp.get("/images/<int:image_id>")
def image_api(image_id: int):
    check_image_id(image_id)
    with runtime().connection() as conn:
        detail = catalog.image_detail(conn, image_id)
    detail["similar"] = [h.to_dict() for h in similar(image_id).hits if h.id != image_id]
    return detail


@bp.get("/images/<int:image_id>/similar")
def similar_api(image_id: int):
    check_image_id(image_id)
    return similar(image_id).to_dict()


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
    from clipdex.search import NotFound

    with runtime().connection() as conn:
        run = status.get_run(conn, run_id) if run_id <= 2**63 - 1 else None
    if run is None:
        raise NotFound(f"there is no run {run_id}")
    return run.to_dict()


@bp.get("/status/<int:run_id>/failures")
def failures_api(run_id: int):
    with runtime().connection() as conn:
        rows = status.failures(conn, run_id if run_id <= 2**63 - 1 else -1, limit=1000)
    return {"failures": [{"root": f.root, "path": f.path, "source": f.source, "stage": f.stage,
                          "reason": f.reason, "at": f.created_at.isoformat()} for f in rows]}


@bp.get("/openapi.json")
def openapi():
    return send_from_directory(current_app.static_folder, "openapi.json", mimetype="application/json")
