"""The review page: a local web page over a run folder to approve and reject its images.

`create_app(source)` is a raw ASGI app (served by uvicorn on loopback, as `serve` is):
a grid of every result image that wraps to the window, filters by axis value, status and
verdict, a large view (seed | result, mask overlay, prompt, request fields) and keyboard
review; decisions go to the spec's `<stem>.review.yaml` (specrunner.report.review). The
page is plain HTML, CSS and JavaScript shipped as package data: it works offline.
"""

from __future__ import annotations

from specrunner.review.app import ReviewApp
from specrunner.review.source import Source


def create_app(source: Source) -> ReviewApp:
    """The ASGI app serving the review page of `source`."""
    return ReviewApp(source)


__all__ = ["ReviewApp", "Source", "create_app"]
