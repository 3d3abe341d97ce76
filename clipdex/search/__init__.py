"""Search: one request type, one service, and the parts they are made of.

    request.py      SearchRequest / QuerySpec: parameters -> a checked request (all caps here)
    filters.py      the filter language -> parameterised SQL
    query_vector.py texts (via the text cache), images, uploads -> one unit vector
    plan.py         exact sort or HNSW with iterative scan, and the ranking SQL
    cursors.py      the next-page cursor (query vector + filters + last row)
    results.py      Hit and Page (no web addresses)
    service.py      SearchService.search / .similar, which the CLI, the API and the pages call
    errors.py       QueryError (400), NotFound (404), Conflict (409)
"""

from clipdex.search.cursors import Cursor
from clipdex.search.errors import Conflict, NotFound, QueryError
from clipdex.search.filters import Filters, check_text
from clipdex.search.query_vector import combine
from clipdex.search.plan import ranked_ids
from clipdex.search.request import (DEFAULT_PAGE, MAX_PAGE, QuerySpec, SearchRequest, check_image_id,
                                    parse_like_term, split_weight)
from clipdex.search.results import Hit, Page
from clipdex.search.service import SearchService

__all__ = ["Conflict", "Cursor", "DEFAULT_PAGE", "Filters", "Hit", "MAX_PAGE", "NotFound", "Page", "QueryError",
           "QuerySpec", "SearchRequest", "SearchService", "check_image_id", "check_text", "combine",
           "parse_like_term", "ranked_ids", "split_weight"]
