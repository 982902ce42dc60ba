"""The WTForms validator (``async_store.wtforms.StoreRules``): the storage's rules on a form's
file field, in a real Flask app, before the view saves."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import flask
from wtforms import Form
from wtforms.fields import FileField, MultipleFileField

from async_store import Rules, Store, UploadInfo
from async_store.wtforms import StoreRules
from tests.conftest import make_app

HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64


async def needs_a_title(info: UploadInfo) -> None:
    if b"title" not in info.head:
        raise ValueError("it has no title")


class AvatarForm(Form):
    avatar = FileField(validators=[StoreRules(Rules(types=["image/*"]))])


class DocumentsForm(Form):
    pages = MultipleFileField(validators=[StoreRules(Rules(validators=[needs_a_title]))])


def post(app: Any, route: str, files: dict[str, Any]) -> dict[str, Any]:
    reply = app.test_client().post(route, data=files, content_type="multipart/form-data")
    assert reply.status_code == 200, reply.data
    return dict(reply.json)


def app_with_views(store_path: Path, **config: Any) -> tuple[Any, Store]:
    app = make_app("flask", store_path, **config)
    store = Store(app)

    @app.post("/avatar")
    def avatar() -> dict[str, Any]:
        form = AvatarForm(flask.request.files)
        if not form.validate():
            return {"errors": form.errors}
        provider = store.Provider(form.avatar.data)
        provider.save()
        return {"stored": provider.relative_path}

    @app.post("/pages")
    def pages() -> dict[str, Any]:
        form = DocumentsForm(flask.request.files)
        return {"errors": form.errors} if not form.validate() else {"ok": True}

    return app, store


def test_a_form_refuses_what_the_rules_refuse_and_the_view_saves_what_passes(
    store_path: Path,
) -> None:
    app, store = app_with_views(store_path, STORE_CHECK_CONTENT=True)
    try:
        lying = post(app, "/avatar", {"avatar": (io.BytesIO(HTML), "me.png")})
        [message] = lying["errors"]["avatar"]
        assert "'me.png'" in message and "check_content" in message and "HTML" in message
        other = post(app, "/avatar", {"avatar": (io.BytesIO(b"%PDF-1.7 x"), "cv.pdf")})
        assert "types=" in other["errors"]["avatar"][0]
        honest = post(app, "/avatar", {"avatar": (io.BytesIO(PNG), "me.png")})
        assert honest == {"stored": "me.png"}
        # The validator read the head and put it back: the whole file was stored.
        assert (store_path / "me.png").read_bytes() == PNG
        assert sorted(p.name for p in store_path.iterdir()) == ["me.png"]
    finally:
        store.close()


def test_the_storages_size_limit_and_async_validators_on_every_file_of_a_field(
    store_path: Path,
) -> None:
    app, store = app_with_views(store_path, STORE_MAX_FILE_SIZE=100)
    try:

        def titled() -> tuple[io.BytesIO, str]:
            return io.BytesIO(b"<title>a</title>"), "a.html"

        untitled = (io.BytesIO(b"no heading"), "b.txt")
        assert post(app, "/pages", {"pages": [titled()]}) == {"ok": True}
        refused = post(app, "/pages", {"pages": [titled(), untitled]})
        assert "needs_a_title: it has no title" in refused["errors"]["pages"][0]
        big = post(app, "/pages", {"pages": [(io.BytesIO(b"<title>" * 50), "big.html")]})
        assert "max_size=100" in big["errors"]["pages"][0]
    finally:
        store.close()
