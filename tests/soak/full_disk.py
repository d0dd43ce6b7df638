"""A full disk during pull and create: the store on a small tmpfs. Each fails with a clear error,
nothing half-written is left as a blob or a model, and the server goes on serving."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx

from registry.store import Store
from registry.verify import verify
from tests.soak.common import Row, Scale, generate, soak_server
from tests.soak.crashes import BIG, BIG_SIZE, pull, upload_and_create, variant_gguf
from tests.test_pull_push import tiny_model

# Room for the bundled model (about 253 MB) and some 50 MB more: neither the 96 MB pull nor the
# 253 MB upload fits.
TMPFS_SIZE = "310m"
NO_SPACE = "no space left on device"


def _mount(point: Path) -> str | None:
    """Mount a tmpfs at `point`; why not, when it cannot be (no privilege, no tmpfs)."""
    point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                           str(point)], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr.strip() or "mount failed")


def run(scale: Scale, source: Path, folder: Path) -> Row:
    del scale  # one pull and one create fill the disk; repeating adds nothing
    models = folder / "disk" / "models"
    why = _mount(models)
    if why is not None:
        return Row("full disk during pull and create", "skipped", None,
                   f"cannot mount a tmpfs here ({why}); run as root on Linux")
    problems: list[str] = []
    try:
        shutil.copytree(source, models, dirs_exist_ok=True)  # the bundled model
        with soak_server(folder / "registry", source, CORRAL_SERVE_REGISTRY="1") as registry:
            big = tiny_model(Store(registry.models), BIG, BIG_SIZE).layers[0]
            gguf, digest = variant_gguf(source, folder)
            with soak_server(folder / "disk", source, clone=False) as server:
                lines = pull(server, f"{registry.host}/{BIG}")
                errors = [line["error"] for line in lines if "error" in line]
                if not errors or NO_SPACE not in errors[-1].lower():
                    problems.append(f"pull on a full disk ended {lines[-1:]}")
                reply = upload_and_create(server, gguf, digest)
                # Ollama-shaped 507 with a plain message (issue 24), not a 500 with errno text
                if reply.status_code != 507 or "disk is full" not in reply.text.lower():
                    problems.append(f"create on a full disk: {reply.status_code} "
                                    f"{reply.text[:200]}")
                report = verify(server.models)
                if not report.sound:
                    problems.append(f"verify found damage: {report.damage[:2]}")
                blobs = server.models / "blobs"
                for half in (blobs / f"sha256-{big.digest[7:]}", blobs / f"sha256-{digest[7:]}"):
                    if half.exists():
                        problems.append(f"a blob was stored from a failed write: {half.name}")
                if any(name.startswith(BIG.split(":")[0]) or "soak-made" in name
                       for name in (m["name"] for m in httpx.get(
                           server.url + "/api/tags", timeout=30).json()["models"])):
                    problems.append("a model appeared from a failed pull or create")
                served = generate(server.url)
                if served.status_code != 200:
                    problems.append(f"the server stopped serving: {served.status_code} "
                                    f"{served.text[:200]}")
                freed = verify(server.models, repair=True, partials=True).removed
                pull_error, create_error = errors[-1:] or ["-"], reply.text[:120]
    finally:
        subprocess.run(["umount", "-l", str(models)], check=False)
    figures = (f"tmpfs of {TMPFS_SIZE}: pull -> {pull_error[0]!r}; create -> "
               f"{reply.status_code} {create_error!r}; verify sound, server still serves; "
               f"--repair --partials freed {len(freed)} files")
    return Row("full disk during pull and create", "pull + create on a tmpfs", not problems,
               figures, problems)
