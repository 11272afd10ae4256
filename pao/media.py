"""What an asset's bytes are, and how its name may be shown: pure functions.

The media type of an asset is read from its first bytes, never taken on the
uploader's word: a type a pipeline relies on (`contentMediaType: audio/*`) must
say what the bytes are. The uploader's declared type only refines what the bytes
cannot tell apart (a text file's `text/csv`, a zip's `docx`, binary of a format not
known here) and may not contradict them (a declared `image/png` whose bytes are HTML
or text is refused, and so is a text type for binary bytes).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

import puremagic

from pao.errors import InvalidInput

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
HTML = "text/html"
XML = "application/xml"
SVG = "image/svg+xml"
ZIP = "application/zip"

SNIFF_BYTES = 64 * 1024
"""How many of the first bytes are looked at (formats that say what they are later,
such as ISO images, are not told apart)."""

# Names one type goes by, to the one this API stores.
_ALIASES = {
    "audio/wave": "audio/wav",
    "audio/x-wav": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-gzip": "application/gzip",
    "application/x-zip-compressed": ZIP,
    "application/x-zip": ZIP,
    "text/xml": XML,
    "video/avi": "video/x-msvideo",
    "audio/x-flac": "audio/flac",
    "application/x-pdf": "application/pdf",
}

# Markup a browser would render (and run scripts in): told from the bytes, never trusted.
_MARKUP = frozenset({HTML, "application/xhtml+xml", XML, SVG})

# What the bytes of a container cannot tell apart: the declared type may narrow it.
_REFINES: dict[str, frozenset[str]] = {
    ZIP: frozenset(
        {
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "application/vnd.oasis.opendocument.text",
            "application/vnd.oasis.opendocument.spreadsheet",
            "application/vnd.oasis.opendocument.presentation",
            "application/epub+zip",
            "application/java-archive",
            "application/vnd.android.package-archive",
        }
    ),
    "application/ogg": frozenset({"audio/ogg", "video/ogg", "audio/opus"}),
    "video/mp4": frozenset({"audio/mp4", "audio/x-m4a", "audio/m4a", "video/quicktime"}),
    "audio/mp4": frozenset({"video/mp4", "audio/x-m4a", "audio/m4a"}),
    "video/webm": frozenset({"audio/webm"}),
    "video/x-matroska": frozenset({"video/webm", "audio/webm", "audio/x-matroska"}),
}

# Application types that are text; with every text/* type, the declared type of text bytes.
_TEXT_APPLICATION = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/sql",
        "application/x-sh",
        "application/graphql",
    }
)

# WHATWG MIME sniffing's HTML openings (after a BOM and whitespace), each followed by a
# space or '>' (https://mimesniff.spec.whatwg.org/#identifying-a-resource-with-an-unknown-mime-type).
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")
_OOXML = ((b"word/", 0), (b"xl/", 1), (b"ppt/", 2))
_OOXML_TYPES = (
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)


def canonical(media_type: str) -> str:
    """`media_type` without parameters, lowercased, under the name this API uses."""
    bare = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def is_text_type(media_type: str) -> bool:
    """Types whose bytes are text: text/*, JSON, YAML, `+json` and `+xml` and the like."""
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_APPLICATION
        or media_type in _MARKUP
        or media_type.endswith(("+json", "+xml"))
    )


def is_markup(media_type: str) -> bool:
    """HTML, XHTML, XML and SVG: a browser would render them, scripts and all."""
    return media_type in _MARKUP or media_type.endswith("+xml")


def sniff(head: bytes) -> str:
    """The media type the first bytes of a file show: markup, a known binary format,
    `text/plain` for other text, else `application/octet-stream`."""
    if not head:
        return TEXT
    markup = _markup(head)
    if markup is not None:
        return markup
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(head)
    found = _magic(head)
    if found is not None:
        return found
    return TEXT if _looks_like_text(head) else OCTET_STREAM


def settle(sniffed: str, declared: str | None, loc: tuple[str | int, ...]) -> str:
    """The type to store: the sniffed one, or the declared one where it only narrows it.

    InvalidInput (a 422 naming `loc`) when the declared type contradicts the bytes.
    """
    if declared is None:
        return sniffed
    wanted = canonical(declared)
    if not wanted or wanted in (OCTET_STREAM, sniffed):
        return sniffed
    if not _TYPE.match(wanted):
        raise InvalidInput.one(loc, f"{declared[:100]!r} is not a media type (type/subtype)")
    if sniffed == TEXT and is_text_type(wanted):
        return wanted  # the bytes are text; which text, only the uploader knows
    if sniffed in _MARKUP and (wanted == TEXT or wanted in _MARKUP):
        return wanted if wanted in _MARKUP else sniffed
    if wanted in _REFINES.get(sniffed, ()):
        return wanted
    if sniffed == OCTET_STREAM and not is_text_type(wanted):
        return wanted  # binary of a format we do not know: only the uploader can name it
    what = "binary, not text" if sniffed == OCTET_STREAM else sniffed
    raise InvalidInput.one(
        loc,
        f"the part's Content-Type says {wanted} but its content is {what}; send the right "
        "type, or application/octet-stream (or none) to store it as it is sniffed",
    )


def _markup(head: bytes) -> str | None:
    text = head
    for bom in _BOMS:
        if text.startswith(bom):
            text = text[len(bom) :]
            break
    if head.startswith((b"\xfe\xff", b"\xff\xfe")):
        try:  # UTF-16 markup: look at it as ASCII
            text = (
                head[2:]
                .decode("utf-16-be" if head[1] == 0xFF else "utf-16-le")
                .encode("ascii", "ignore")
            )
        except UnicodeDecodeError:
            return None
    start = text.lstrip(b" \t\n\r\x0c")[:1024].lower()
    if not start.startswith(b"<"):
        return None
    for tag in _HTML_TAGS:
        if start.startswith(tag) and start[len(tag) : len(tag) + 1] in (b" ", b">", b"\t", b"\n"):
            return HTML
    if start.startswith((b"<svg", b"<?xml", b"<!doctype svg")):
        lowered = text[:SNIFF_BYTES].lower()
        if b"<svg" in lowered:
            return SVG
        if b"<html" in lowered or b"http://www.w3.org/1999/xhtml" in lowered:
            return HTML
        return XML
    return None


def _zip_kind(head: bytes) -> str:
    """A zip, or the document format inside it when its first entries say."""
    # ODF and EPUB store an uncompressed `mimetype` entry first, holding their type.
    if head[30:38] == b"mimetype":
        stored = head[38 : 38 + 80].split(b"PK", 1)[0]
        found = re.match(rb"application/[a-z0-9.+-]{1,70}", stored)
        if found and found.group().decode() in _REFINES[ZIP]:
            return found.group().decode()
    for marker, index in _OOXML:
        if b"[Content_Types].xml" in head and marker in head:
            return _OOXML_TYPES[index]
    return ZIP


def _magic(head: bytes) -> str | None:
    """A binary format puremagic knows by its signature; text results are left to us."""
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return None
    for match in matches:
        found = canonical(match.mime_type or "")
        if not found or found == OCTET_STREAM or not _TYPE.match(found):
            continue
        if is_text_type(found):
            return None  # its text guesses are weak (a brace makes JSON): text is ours to read
        return found
    return None


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 (a character cut at the end of the head allowed) with no control characters
    but tab, line feed, form feed and carriage return."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return _CONTROL.search(text) is None


# Filenames -------------------------------------------------------------------------------

MAX_FILENAME_BYTES = 255
_SLASHES = str.maketrans({c: "_" for c in "\u2215\u2044\u29f8\u29f9\ufe68\uff0f\uff3c"})


def safe_filename(raw: str) -> str:
    """A name safe to store and to show in a header: its last path part, in NFC, without
    control or format characters (NUL, CR, LF, bidi overrides), at most 255 UTF-8 bytes
    (the extension kept). Empty when nothing is left."""
    name = unicodedata.normalize("NFC", raw).translate(_SLASHES)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] not in ("C", "Z") or c == " ")
    name = name.strip(" .")
    if not name:
        return ""
    if len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = name, ""
        suffix = f".{ext}" if ext else ""
        budget = MAX_FILENAME_BYTES - len(suffix.encode())
        stem = stem.encode()[:budget].decode("utf-8", "ignore")
        name = stem + suffix
    return name


def content_disposition(filename: str, fallback: str) -> str:
    """`attachment` with an ASCII `filename` and the exact one as RFC 6266 / 5987
    `filename*=UTF-8''…`; `fallback` when the name is empty once made safe."""
    name = safe_filename(filename) or fallback
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\%;]', "_", ascii_name).strip() or fallback
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
