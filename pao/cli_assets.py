"""`pao assets`: upload, list, read, download, delete and link assets on a running API.

Files stream both ways, a piece at a time, so a file of any size costs the command
about a MiB of memory. On a terminal a progress bar (rich) shows on stderr; piped or
redirected, nothing but the result is printed. A download goes to `PATH.part` and
becomes PATH only once its SHA-256 matches; an interrupted one is resumed from the
`.part` file by running the same command again (a Range request).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pao.cli_client import (
    UsageError,
    _connection_options,
    _leaf,
    _more,
    _page_options,
    _pages,
    duration,
    fields,
    short,
    size,
    table,
    when,
)
from pao.client import Asset, PaoClient, Progress

PART_SUFFIX = ".part"
"""A download in progress is written beside its target under this suffix."""
MAX_LINK_SECONDS = 3600


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Progress | None]:
    """A transfer's progress bar on stderr, when stderr is a terminal; else None."""
    if not sys.stderr.isatty():
        yield None
        return
    # Loaded only here: `pao --help` and every other command start without it.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def _asset_rows(assets: list[Asset]) -> list[list[str]]:
    return [
        [
            a["id"],
            a["media_type"],
            size(a["size"]),
            when(a["created_at"]),
            short(a["filename"] or "-", 30),
            short(a["label"] or "-", 30),
            short(",".join(a["tags"]) or "-", 30),
        ]
        for a in assets
    ]


ASSET_HEADERS = ("ID", "TYPE", "SIZE", "CREATED (UTC)", "FILENAME", "LABEL", "TAGS")


def _asset_text(asset: Asset) -> str:
    return fields(
        [
            ("id", asset["id"]),
            ("filename", asset["filename"] or "-"),
            ("label", asset["label"] or "-"),
            ("media type", asset["media_type"]),
            ("size", f"{size(asset['size'])} ({asset['size']} bytes)"),
            ("sha256", asset["sha256"]),
            ("tags", ", ".join(asset["tags"]) or "-"),
            ("run", asset["run_id"] or "-"),
            ("created by", asset["created_by"]),
            ("created", when(asset["created_at"])),
        ]
    )


def _file_size(path: Path) -> int:
    """The size of a file to upload; UsageError if it is not a readable file."""
    try:
        found = path.stat()
        if not path.is_file():
            raise UsageError(f"{str(path)!r} is not a file")
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    return found.st_size


async def assets_upload(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    path = Path(args.path)
    total = _file_size(path)
    with progress_bar(f"uploading {path.name}", total) as progress:
        asset = await client.upload_asset(
            path,
            label=args.label or "",
            tags=args.tag or (),
            media_type=args.media_type,
            run_id=args.run_id,
            progress=progress,
        )
    return asset, f"uploaded asset {asset['id']}\n" + _asset_text(asset)


async def assets_list(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    async def fetch(cursor: str | None) -> Any:
        return await client.list_assets(
            tag=args.tag,
            label=args.label,
            media_type=args.media_type,
            run_id=args.run_id,
            task_id=args.task_id,
            limit=args.limit,
            cursor=cursor,
        )

    items, cursor = await _pages(fetch, args)
    text = table(ASSET_HEADERS, _asset_rows(items), empty="(no assets)") + _more(cursor)
    return {"items": items, "next_cursor": cursor}, text


async def assets_get(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    asset = await client.get_asset(args.id)
    return asset, _asset_text(asset)


def local_name(asset: Asset) -> str:
    """Where a download goes when no -o is given: the asset's file name in the current
    folder (its last path part, never hidden), else asset-<id>."""
    name = os.path.basename(asset["filename"].replace("\\", "/"))
    if not name or name.startswith("."):
        return f"asset-{asset['id']}"
    return name


async def assets_download(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    if args.output == "-":
        if args.json:
            raise UsageError("--json and -o - would both write to stdout; drop one")
        asset = await client.get_asset(args.id)
        with progress_bar(f"downloading {local_name(asset)}", asset["size"]) as progress:
            await client.write_asset(args.id, sys.stdout.buffer, progress=progress)
        sys.stdout.buffer.flush()
        return None, ""
    asset = await client.get_asset(args.id)
    target = Path(args.output) if args.output else Path(local_name(asset))
    if args.output is None and target.exists():
        raise UsageError(f"{target} exists; pass -o PATH to write it there (or elsewhere)")
    if target.is_dir():
        target = target / local_name(asset)
    part = target.with_name(target.name + PART_SUFFIX)
    if part.exists():
        print(f"pao: resuming {part} at {part.stat().st_size} bytes", file=sys.stderr)
    with progress_bar(f"downloading {target.name}", asset["size"]) as progress:
        asset = await client.download_asset(args.id, part, progress=progress, resume=True)
    part.replace(target)
    text = f"downloaded asset {asset['id']} to {target} ({size(asset['size'])}, SHA-256 checked)"
    return {**asset, "path": str(target)}, text


async def assets_rm(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    await client.delete_asset(args.id)
    return {"id": args.id, "deleted": True}, f"deleted asset {args.id}"


async def assets_link(client: PaoClient, args: argparse.Namespace) -> tuple[Any, str]:
    if not 1 <= args.expires_in <= MAX_LINK_SECONDS:
        raise UsageError(f"--expires-in must be 1 second to {MAX_LINK_SECONDS // 60} minutes")
    link = await client.asset_link(args.id, expires_in=args.expires_in)
    if not args.json:
        print(
            f"pao: anyone with this link can read the asset until {when(link['expires_at'])}",
            file=sys.stderr,
        )
    return link, link["url"]


def add_commands(sub: Any) -> None:
    """Add `pao assets` to the `pao` parser's subcommands."""
    common = _connection_options()
    assets = sub.add_parser("assets", help="upload, list, download and link assets (files)")
    ax = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")

    p = _leaf(ax, "upload", assets_upload, "upload a file, streamed (assets:write)", common)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--label", help="free text, at most 200 characters")
    p.add_argument("--tag", action="append", metavar="TAG", help="a tag; repeat for more")
    p.add_argument("--run-id", metavar="RUN_ID", help="attach it to a run (its owner's then)")
    p.add_argument(
        "--media-type",
        metavar="TYPE",
        help="say what it is, e.g. text/csv (checked; default: read from its bytes)",
    )

    p = _leaf(ax, "list", assets_list, "assets, newest first", common)
    p.add_argument("--tag", metavar="TAG")
    p.add_argument("--label", metavar="LABEL")
    p.add_argument("--media-type", metavar="TYPE", help="e.g. image/png, or a family: image/*")
    p.add_argument("--run-id", metavar="RUN_ID")
    p.add_argument("--task-id", metavar="TASK_ID")
    _page_options(p)

    p = _leaf(ax, "get", assets_get, "one asset's metadata", common)
    p.add_argument("id", metavar="ASSET_ID")

    p = _leaf(
        ax,
        "download",
        assets_download,
        "download an asset, streamed and checked against its SHA-256; run it again to resume "
        "an interrupted one",
        common,
    )
    p.add_argument("id", metavar="ASSET_ID")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="file or folder to write (replaced if it exists), - for stdout; default: the "
        "asset's file name here, never replacing a file",
    )

    p = _leaf(ax, "rm", assets_rm, "delete an asset and free its bytes", common)
    p.add_argument("id", metavar="ASSET_ID")

    p = _leaf(ax, "link", assets_link, "a signed URL that reads the asset without a token", common)
    p.add_argument("id", metavar="ASSET_ID")
    p.add_argument(
        "--expires-in",
        type=duration,
        default=900,
        metavar="DURATION",
        help="how long it works: seconds or e.g. 15m, 1h (at most 1h; default 15m)",
    )
