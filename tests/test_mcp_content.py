"""How non-text content blocks of a tool result become what the dashboard shows
(``mcp_client.content_block``): media inline only when safe and small, links only http(s)."""

from __future__ import annotations

import base64
from types import SimpleNamespace

from django.test import SimpleTestCase

from sessionadmin import mcp_client

PNG = base64.b64encode(b"\x89PNG fake").decode()


def block(**fields: object) -> SimpleNamespace:
    fields.setdefault("annotations", None)
    return SimpleNamespace(**fields)


class ContentBlockTests(SimpleTestCase):
    def test_it_inlines_a_small_raster_image(self) -> None:
        shown = mcp_client.content_block(block(type="image", data=PNG, mime_type="image/png"))
        self.assertEqual(shown["data_url"], f"data:image/png;base64,{PNG}")
        self.assertEqual((shown["bytes"], shown["refused"]), (9, ""))

    def test_it_refuses_svg_invalid_base64_and_oversized_media(self) -> None:
        svg = mcp_client.content_block(block(type="image", data=PNG, mime_type="image/svg+xml"))
        bad = mcp_client.content_block(block(type="image", data="not base64!", mime_type="image/png"))
        big = base64.b64encode(b"\0" * (mcp_client.MAX_INLINE_BYTES + 1)).decode()
        large = mcp_client.content_block(block(type="audio", data=big, mime_type="audio/wav"))
        self.assertEqual([svg["data_url"], bad["data_url"], large["data_url"]], ["", "", ""])
        self.assertEqual(svg["refused"], "image/svg+xml is not shown inline")
        self.assertEqual(bad["refused"], "not valid base64")
        self.assertEqual(large["refused"], "larger than 512 KiB")

    def test_it_links_only_web_uris(self) -> None:
        web = mcp_client.content_block(block(type="resource_link", uri="https://example.org/a", name="A", mime_type=None))
        js = mcp_client.content_block(block(type="resource_link", uri="JavaScript:alert(1)", name="B", mime_type=None))
        files = mcp_client.content_block(block(type="resource_link", uri="file:///etc/passwd", name="C", mime_type=None))
        self.assertEqual([web["href"], js["href"], files["href"]], ["https://example.org/a", "", ""])

    def test_it_shows_embedded_text_and_offers_blobs_as_octet_stream(self) -> None:
        text = mcp_client.content_block(
            block(type="resource", resource=SimpleNamespace(uri="test://a.txt", mime_type="text/plain", text="hi"))
        )
        blob = mcp_client.content_block(
            block(
                type="resource", resource=SimpleNamespace(uri="test://x/data.html", mime_type="text/html", text=None, blob="AAEC")
            )
        )
        self.assertEqual(text["text"], "hi")
        self.assertEqual((blob["data_url"], blob["filename"]), ("data:application/octet-stream;base64,AAEC", "data.html"))

    def test_it_keeps_annotations(self) -> None:
        notes = SimpleNamespace(audience=["user"], priority=0.5, last_modified=None)
        shown = mcp_client.content_block(block(type="image", data=PNG, mime_type="image/png", annotations=notes))
        self.assertEqual(shown["annotations"], {"audience": ["user"], "priority": 0.5})
