"""``results/pretrained/{asset}/``: fetch or assemble one pretrained asset from its config block.

Sources (``pretrained.<name>.source``):

- ``url``: one file (``url``, ``sha256``, optional ``filename`` and ``size``);
- ``google_drive``: one publicly shared Google Drive file (``file_id``, ``filename``, ``sha256``), fetched from
  Drive's direct-download endpoint; a web page instead of the file (not shared, over quota) is an error;
- ``torch_parts``: one torch checkpoint published as several pickles (``parts``, a list of
  ``{filename, sha256}`` from Hub repo ``repo_id`` or each from its ``url``), read with a
  restricted unpickler, merged, and written as ``<component>/model.safetensors`` +
  ``config.json`` per network (LayoutLLM's GLIGEN checkpoint; ``t2i.checkpoints.torch_parts``);
- ``huggingface``: a Hub snapshot (``repo_id``, ``revision``, ``repo_type``, ``allow_patterns``);
- ``python_package``: a folder (``subdir``) shipped inside an installed package (``package``);
- ``local``: a file or folder on this machine (``path``), copied, or symlinked with ``link: true``;
- ``trained``: trained by the workflow from a ``recipe`` on a ``dataset`` (``t2i.checkpoints.recipes``).

The asset is built in a temporary folder that replaces ``out_dir`` only when complete
(with ``SHA256SUMS`` and ``provenance.json``). Downloads go to ``{out_dir}.download/``
first, which survives a killed job so that the rerun resumes, and is removed on success.
Pickle checkpoints that would need full unpickling are refused here already unless the
asset sets ``trust_pickle: true``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from t2i.checkpoints.hashing import ChecksumError, sha256_file, verify_sha256sums, write_sha256sums
from t2i.checkpoints.restricted_pickle import RefusedGlobalError
from t2i.checkpoints.safe_load import PICKLE_SUFFIXES, UnsafeCheckpointError, load_state_dict
from t2i.checkpoints.torch_parts import COMPONENTS, PartsError, merge_parts, read_part, write_components
from t2i.data.download import DownloadError, download_url
from t2i.data.hf import HubDownloadError, download_file, published_sha256, snapshot
from t2i.utils.atomic import atomic_dir
from t2i.utils.provenance import write_provenance

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
DRIVE_DOWNLOAD = "https://drive.usercontent.google.com/download"  # Drive's direct download (confirm=t: no warning page)


class AssetError(RuntimeError):
    """An asset that cannot be built; the message starts with its config key."""


class _Asset:
    """Config look-ups that name the offending key in their errors."""

    def __init__(self, name: str, cfg: dict):
        self.name, self.cfg = name, cfg

    def key(self, *parts: str | int) -> str:
        return f"pretrained.{self.name}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)

    def error(self, message: str, *parts: str | int) -> AssetError:
        return AssetError(f"{self.key(*parts)}: {message}")

    def require(self, field: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.cfg.get(field)
        if value is None:
            raise self.error(f"required for source {self.cfg['source']!r}", field)
        if not isinstance(value, kind):
            raise self.error(f"expected {getattr(kind, '__name__', kind)}, got {value!r}", field)
        return value

    def sha256(self, value: Any, *parts: str | int) -> str | None:
        if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise self.error(f"not a SHA-256 hex digest: {value!r}", *parts)
        return value.lower() if value else None


def assemble_asset(name: str, cfg: dict, out_dir: str | os.PathLike) -> Path:
    """Build ``out_dir`` for asset ``name`` from its validated config block; return ``out_dir``."""
    out_dir = Path(out_dir)
    asset = _Asset(name, cfg)
    source = cfg.get("source")
    if source not in SOURCES:
        raise asset.error(f"unknown source {source!r} (one of {', '.join(SOURCES)})", "source")
    staging = out_dir.with_name(out_dir.name + ".download")
    with atomic_dir(out_dir) as tmp:
        details = SOURCES[source](asset, tmp, staging)
        if cfg.get("convert"):
            details["converted"] = _convert(asset, tmp)
        if not cfg.get("trust_pickle", False):
            _refuse_unsafe_pickles(asset, tmp)
        write_sha256sums(tmp)
        write_provenance(tmp, cfg, extra={"asset": name, "source": details})
    shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: assembled in %s", asset.key(), out_dir)
    return out_dir


def _from_url(asset: _Asset, tmp: Path, staging: Path) -> dict:
    url = asset.require("url")
    filename = asset.cfg.get("filename") or _url_filename(url)
    if not filename:
        raise asset.error(f"no file name in {url!r}; set `filename`", "filename")
    _download_one(asset, url, filename, tmp, staging, "url")
    return {"url": url, "filename": filename}


def _download_one(asset: _Asset, url: str, filename: str, tmp: Path, staging: Path, key: str, *,
                  refuse_web_page: bool = False, hint: str = "") -> None:
    """``url`` into the asset as ``filename``, checked against the block's ``sha256`` and ``size``; a failure is
    the asset's error at ``key`` (``hint`` added where the server answered with a web page)."""
    sha256 = asset.sha256(asset.cfg.get("sha256"), "sha256")
    try:
        path = download_url(url, staging / filename, sha256=sha256, size=asset.cfg.get("size"),
                            refuse_web_page=refuse_web_page)
    except DownloadError as e:
        raise asset.error(f"{e}{hint if 'web page' in str(e) else ''}", key) from None
    if sha256 is None:
        log.warning("%s: no sha256 configured, so the download is not verified", asset.key())
    _place(path, tmp / filename)


def _from_google_drive(asset: _Asset, tmp: Path, staging: Path) -> dict:
    file_id, filename = asset.require("file_id"), asset.require("filename")
    _download_one(asset, f"{DRIVE_DOWNLOAD}?id={file_id}&export=download&confirm=t", filename, tmp, staging,
                  "file_id", refuse_web_page=True,
                  hint=" (is the file shared with anyone who has the link? Drive also serves a page when its "
                       "download quota is used up: download it in a browser and use source: local)")
    return {"google_drive": file_id, "filename": filename}


def _from_torch_parts(asset: _Asset, tmp: Path, staging: Path) -> dict:
    specs = [(filename, sha256 or _published_sha256(asset, i, filename), url)
             for i, (filename, sha256, url) in enumerate(_part_specs(asset))]
    components = asset.cfg.get("components") or list(COMPONENTS)
    loaded = []
    for i, (filename, sha256, url) in enumerate(specs):
        path = _fetch_part(asset, i, filename, sha256, url, staging)
        try:
            loaded.append(read_part(path, name=filename))
        except (PartsError, RefusedGlobalError) as e:
            raise asset.error(str(e), "parts", i) from None
    names = [filename for filename, _, _ in specs]
    try:
        ckpt = merge_parts(loaded, names, components)
    except PartsError as e:
        raise asset.error(str(e), "parts") from None
    parts = [{"filename": filename, "sha256": sha256} for filename, sha256, _ in specs]
    record = write_components(ckpt, tmp, components, parts=parts)
    where = {"url": [url for _, _, url in specs]} if asset.cfg.get("repo_id") is None else {
        "repo_id": asset.cfg["repo_id"], "revision": asset.cfg.get("revision") or "main",
        "repo_type": asset.cfg.get("repo_type") or "model"}
    return {**where, **record}


def _part_specs(asset: _Asset) -> list[tuple[str, str | None, str | None]]:
    """``(filename, sha256, url)`` per part; parts come from ``repo_id`` (sha256 None: the Hub's published one)
    or each from its own ``url``."""
    parts = asset.require("parts", list)
    if not parts:
        raise asset.error("needs at least one part", "parts")
    from_hub = asset.cfg.get("repo_id") is not None
    if from_hub and not isinstance(asset.cfg["repo_id"], str):
        raise asset.error(f"expected str, got {asset.cfg['repo_id']!r}", "repo_id")
    specs = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("filename"), str):
            raise asset.error("expected a mapping with a 'filename'", "parts", i)
        filename = part["filename"]
        if PurePosixPath(filename).is_absolute() or ".." in PurePosixPath(filename).parts or not filename.strip():
            raise asset.error(f"not a relative file name: {filename!r}", "parts", i, "filename")
        if part.get("sha256") is None and not from_hub:
            raise asset.error("required for a part with a url: its published SHA-256", "parts", i, "sha256")
        url = part.get("url")
        if from_hub == (url is not None):
            raise asset.error("give either `repo_id` for all parts or a `url` for each part", "parts", i)
        if url is not None and not isinstance(url, str):
            raise asset.error(f"expected str, got {url!r}", "parts", i, "url")
        specs.append((filename, asset.sha256(part["sha256"], "parts", i, "sha256"), url))
    if len({s[0] for s in specs}) != len(specs):
        raise asset.error("two parts have the same filename", "parts")
    return specs


def _published_sha256(asset: _Asset, i: int, filename: str) -> str:
    try:
        sha256 = published_sha256(asset.cfg["repo_id"], filename, revision=asset.cfg.get("revision"),
                                  repo_type=asset.cfg.get("repo_type") or "model")
    except HubDownloadError as e:
        raise asset.error(str(e), "parts", i, "sha256") from None
    log.info("%s: %s: the Hub publishes sha256 %s", asset.key("parts", i), filename, sha256)
    return sha256


def _fetch_part(asset: _Asset, i: int, filename: str, sha256: str, url: str | None, staging: Path) -> Path:
    """A copy of the part in ``staging`` verified against ``sha256`` (one from an earlier run is reused)."""
    path = staging / filename
    if path.is_file() and sha256_file(path) == sha256:
        log.info("%s: %s already downloaded and verified", asset.key("parts", i), filename)
        return path
    path.unlink(missing_ok=True)  # stale or damaged: fetch it again
    try:
        if url is not None:
            return download_url(url, path, sha256=sha256)
        download_file(asset.cfg["repo_id"], filename, staging, revision=asset.cfg.get("revision"),
                      repo_type=asset.cfg.get("repo_type") or "model")
    except (DownloadError, HubDownloadError) as e:
        raise asset.error(f"{filename}: {e}", "parts", i) from None
    actual = sha256_file(path)
    if actual != sha256:
        path.unlink()
        origin = "" if asset.cfg["parts"][i].get("sha256") else " (the one the Hub publishes for it)"
        raise asset.error(f"{filename}: checksum mismatch: expected sha256 {sha256}{origin}, got {actual}; the "
                          "download was deleted", "parts", i, "sha256")
    return path


def _from_huggingface(asset: _Asset, tmp: Path, staging: Path) -> dict:
    repo_id = asset.require("repo_id")
    revision = asset.cfg.get("revision")
    try:
        folder = snapshot(repo_id, staging, revision=revision, repo_type=asset.cfg.get("repo_type", "model"),
                          allow_patterns=asset.cfg.get("allow_patterns"))
    except HubDownloadError as e:
        raise asset.error(str(e), "repo_id") from None
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] != ".cache":  # huggingface_hub's resume metadata stays behind
            _place(path, tmp / rel)
    return {"repo_id": repo_id, "revision": revision or "main"}


def _from_python_package(asset: _Asset, tmp: Path, staging: Path) -> dict:
    package = asset.require("package")
    subdir = asset.cfg.get("subdir") or ""
    try:
        spec = importlib.util.find_spec(package)  # locates without running the package's code
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise asset.error(f"no installed package {package!r} (pip install it into this environment)", "package")
    src = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not src.is_dir():
        raise asset.error(f"{src} is not a folder inside package {package!r}", "subdir")
    shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    dists = importlib.metadata.packages_distributions().get(package, [])
    versions = {d: importlib.metadata.version(d) for d in dists}
    return {"package": package, "subdir": subdir, "distributions": versions}


def _from_local(asset: _Asset, tmp: Path, staging: Path) -> dict:
    src = Path(asset.require("path")).expanduser().resolve()
    if not src.exists():
        raise asset.error(f"{src} does not exist", "path")
    link = bool(asset.cfg.get("link", False))
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        dst = tmp / (f.name if f == src else f.relative_to(src))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            dst.symlink_to(f)
        else:
            shutil.copy2(f, dst)
    return {"path": str(src), "link": link}


def _from_trained(asset: _Asset, tmp: Path, staging: Path) -> dict:
    from t2i.checkpoints.recipes import RECIPES
    from t2i.config import RECIPE_ASSET_KEYS
    from t2i.workflow import RESULTS

    recipe = asset.require("recipe")
    if recipe not in RECIPES:
        raise asset.error(f"unknown recipe {recipe!r} (one of {', '.join(RECIPES)})", "recipe")
    dataset_dir = Path(RESULTS) / "datasets" / asset.require("dataset")
    try:
        verify_sha256sums(dataset_dir)
    except ChecksumError as e:
        raise asset.error(str(e), "dataset") from None
    assets = _referenced_assets(asset, RECIPE_ASSET_KEYS.get(recipe, ()))
    metrics = RECIPES[recipe](asset.cfg, dataset_dir, tmp, assets)
    return {"recipe": recipe, "dataset": asset.cfg["dataset"], "assets": {k: str(v) for k, v in assets.items()},
            "metrics": metrics}


def _referenced_assets(asset: _Asset, keys) -> dict[str, Path]:
    """The finished asset folders that ``asset``'s keys name (key -> folder), each checked against its SHA256SUMS."""
    from t2i.workflow import RESULTS

    folders = {}
    for key in keys:
        folder = Path(RESULTS) / "pretrained" / asset.require(key)
        try:
            verify_sha256sums(folder)
        except ChecksumError as e:
            raise asset.error(str(e), key) from None
        folders[key] = folder
    return folders


def _convert(asset: _Asset, folder: Path) -> dict:
    """Replace what the source wrote (a converter of ``takes: file`` needs exactly one file) by the model folder
    the asset's ``convert`` converter writes from it and the assets it names."""
    from t2i.checkpoints.converters import CONVERTERS
    from t2i.config import CONVERTER_ASSET_KEYS

    name = asset.cfg["convert"]
    if name not in CONVERTERS:
        raise asset.error(f"unknown converter {name!r} (one of {', '.join(CONVERTERS)})", "convert")
    converter = CONVERTERS[name]
    source = folder
    if converter.takes == "file":
        files = [p for p in folder.rglob("*") if p.is_file()]
        if len(files) != 1:
            raise asset.error(f"a converter takes one file; the asset has {len(files)}", "convert")
        source = files[0]
    assets = _referenced_assets(asset, CONVERTER_ASSET_KEYS.get(name, ()))
    converted = folder / ".converted"
    try:
        details = converter.convert(source, converted, **assets)
    except Exception as e:  # noqa: BLE001 - any failure is the input's, reported as one line
        where = f"{source.name}: " if source != folder else ""
        raise asset.error(f"{where}{e}", "convert") from None
    for item in folder.iterdir():
        if item != converted:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in converted.iterdir():
        item.rename(folder / item.name)
    converted.rmdir()
    return details


def _url_filename(url: str) -> str:
    return url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def _place(src: Path, dst: Path) -> None:
    """Hard-link a downloaded file into the asset (a copy where links are not possible).

    The download stays in staging until the whole asset succeeds, so a failure after
    the download (an unsafe pickle, say) costs no second download.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _refuse_unsafe_pickles(asset: _Asset, folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file()):
        rel = path.relative_to(folder)
        try:
            load_state_dict(path, mmap=True)
        except UnsafeCheckpointError as e:
            raise asset.error(f"{rel}: {str(e).split(': ', 1)[1]}", "trust_pickle") from None
        except Exception as e:  # noqa: BLE001 - not every .bin is a torch file
            log.warning("%s: %s is not a readable torch checkpoint (%s); not checked", asset.key(), rel, e)


SOURCES: dict[str, Callable[[_Asset, Path, Path], dict]] = {
    "url": _from_url,
    "google_drive": _from_google_drive,
    "torch_parts": _from_torch_parts,
    "huggingface": _from_huggingface,
    "python_package": _from_python_package,
    "local": _from_local,
    "trained": _from_trained,
}
