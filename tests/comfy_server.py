"""A real ComfyUI server for jaxdiff's end-to-end tests: set-up, start/stop, the HTTP/websocket API,
and tiny model files in ComfyUI's single-file layouts.

    root = ensure_comfyui()                       # $JAXDIFF_COMFYUI or /tmp/jaxdiff-comfyui
    write_tiny_flux(root / "models/diffusion_models/tiny_flux.safetensors")
    with ComfyServer(root) as server:
        result = server.run(workflow)             # API-format dict
        result.check()                            # raises with the error and the server log tail
        print(result.files)

`ensure_comfyui` unpacks the ComfyUI snapshot from `../shared/comfyui/` (beside the repo, as CI clones
it) with its `setup_comfyui.sh` when needed, links the repo into `custom_nodes/jaxdiff` and the test-only
pack `tests/comfy_test_nodes` into `custom_nodes/jaxdiff_test_nodes`. The model writers build ComfyUI's
own modules (comfy/ldm/...) at tiny sizes with random weights via the fixtures in tests/, so the files are
what ComfyUI itself would save. Only ComfyUI's own requirements (aiohttp, psutil) are used as clients.

Run as a script for a smoke check: `python tests/comfy_server.py` (starts a server, runs TinyImage →
SaveImage, prints the PNG path).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_COMFYUI = Path(__file__).resolve().parents[2] / "shared" / "comfyui"
SETUP_SCRIPT = SHARED_COMFYUI / "setup_comfyui.sh"
DEFAULT_COMFYUI = Path("/tmp/jaxdiff-comfyui")
TEST_NODES = TESTS / "comfy_test_nodes"
PACK_LINK = "jaxdiff"
TEST_PACK_LINK = "jaxdiff_test_nodes"
REQUIRED_MODULES = ("aiohttp", "torchsde", "alembic", "comfyui_frontend_package")
MODEL_FOLDERS = ("diffusion_models", "vae", "jax_checkpoints")
STARTUP_TIMEOUT = 180.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # EBML header (Matroska / WebM)

if str(TESTS) not in sys.path:  # the fixtures (comfy_fixtures, …) when run as a script
    sys.path.insert(0, str(TESTS))


class ComfySetupError(RuntimeError):
    """ComfyUI could not be set up or started (tests fail on it; they do not skip)."""


# ----------------------------------------------------------------------------- set-up


def comfyui_dir(dir: str | os.PathLike | None = None) -> Path:
    """The ComfyUI root to use: `dir`, else $JAXDIFF_COMFYUI, else /tmp/jaxdiff-comfyui."""
    return Path(dir or os.environ.get("JAXDIFF_COMFYUI") or DEFAULT_COMFYUI).expanduser().absolute()


def _missing_modules(python: str) -> list[str]:
    if Path(python).absolute() == Path(sys.executable).absolute():
        return [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code, *REQUIRED_MODULES], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else list(REQUIRED_MODULES)


def _link(target: Path, link: Path) -> None:
    """`link` → `target` as a symlink; a stale link (or one to elsewhere) is replaced."""
    target = target.resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return
        link.unlink()
    elif link.exists():
        raise ComfySetupError(f"{link} exists and is not a symlink (expected a link to {target}); "
                              "move it away")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def ensure_comfyui(dir: str | os.PathLike | None = None, python: str = sys.executable) -> Path:
    """A ComfyUI root ready to run with `python`: set up by ../shared/comfyui/setup_comfyui.sh when it
    has no main.py or ComfyUI's requirements do not import; the repo linked as custom_nodes/jaxdiff,
    the test pack as custom_nodes/jaxdiff_test_nodes; models/{diffusion_models,vae,jax_checkpoints}
    created. Idempotent (a second call only checks). Raises ComfySetupError."""
    root = comfyui_dir(dir)
    missing = _missing_modules(python)
    if not (root / "main.py").is_file() or missing:
        if not SETUP_SCRIPT.is_file():
            raise ComfySetupError(f"ComfyUI is not set up in {root} and {SETUP_SCRIPT} does not exist "
                                  "(the repo must be cloned beside shared/)")
        why = "no main.py" if not (root / "main.py").is_file() else f"missing modules {missing}"
        print(f"[comfy_server] setting up ComfyUI in {root} ({why})", file=sys.stderr)
        proc = subprocess.run(["bash", str(SETUP_SCRIPT), str(root), python],
                              env={**os.environ, "COMFY_LOCK": "0"}, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise ComfySetupError(f"setup_comfyui.sh failed (rc {proc.returncode}):\n{tail}")
        if not (root / "main.py").is_file() or (missing := _missing_modules(python)):
            raise ComfySetupError(f"after setup_comfyui.sh: main.py in {root}: "
                                  f"{(root / 'main.py').is_file()}, missing modules {missing}")
    _link(REPO, root / "custom_nodes" / PACK_LINK)
    _link(TEST_NODES, root / "custom_nodes" / TEST_PACK_LINK)
    for sub in MODEL_FOLDERS:
        (root / "models" / sub).mkdir(parents=True, exist_ok=True)
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    """One prompt's outcome.

    status: "success" / "error" (from /history) or "rejected" (POST /prompt refused it, HTTP 400;
    `body` has "error" and "node_errors"). `error` is the execution_error data (exception_message,
    exception_type, node_type, traceback, …); `interrupted` the execution_interrupted data.
    `files`: absolute paths of the files the output nodes wrote."""

    status: str
    prompt_id: str | None = None
    messages: list[dict] = field(default_factory=list)
    error: dict | None = None
    interrupted: dict | None = None
    outputs: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    history: dict | None = None
    body: dict | None = None
    elapsed: float = 0.0
    log_tail: str = ""

    @property
    def message_types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    @property
    def exception_message(self) -> str:
        return (self.error or {}).get("exception_message", "")

    def describe(self) -> str:
        lines = [f"prompt {self.prompt_id}: {self.status} in {self.elapsed:.1f} s"]
        if self.body is not None and self.status == "rejected":
            lines.append("rejected: " + json.dumps(self.body, indent=1)[:4000])
        if self.error:
            e = self.error
            lines.append(f"execution_error in {e.get('node_type')} (node {e.get('node_id')}): "
                         f"{e.get('exception_type')}: {e.get('exception_message')}")
            lines.append("".join(e.get("traceback") or [])[-4000:])
        if self.interrupted:
            lines.append(f"interrupted in {self.interrupted.get('node_type')}")
        lines.append("ws messages: " + " ".join(self.message_types))
        if self.log_tail:
            lines.append("server log tail:\n" + self.log_tail)
        return "\n".join(lines)

    def check(self) -> "Result":
        """Raise AssertionError (with the error, traceback and server log tail) unless success."""
        if self.status != "success":
            raise AssertionError(self.describe())
        return self


# ----------------------------------------------------------------------------- the server


class ComfyServer:
    """A ComfyUI server process (`main.py --cpu`) on a free port with fresh output/input/temp dirs.

    Use as a context manager. Startup fails (ComfySetupError, with the log tail) when the process dies,
    a custom node pack logs "IMPORT FAILED", or /system_stats does not answer within the timeout."""

    def __init__(self, comfy_dir: str | os.PathLike | None = None, *, python: str = sys.executable,
                 port: int | None = None, startup_timeout: float = STARTUP_TIMEOUT,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 setup: bool = True):
        self.root = ensure_comfyui(comfy_dir, python) if setup else comfyui_dir(comfy_dir)
        self.python = python
        self.port = port
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.work: Path | None = None
        self.startup_s: float | None = None

    # -- paths

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.work / "output"

    @property
    def input_dir(self) -> Path:
        return self.work / "input"

    @property
    def temp_dir(self) -> Path:
        return self.work / "temp"  # ComfyUI adds its own "temp" below --temp-directory

    @property
    def log_path(self) -> Path:
        return self.work / "server.log"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # -- life cycle

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("server already started")
        for sub in MODEL_FOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="jaxdiff-comfy-"))
        for sub in ("output", "input", "temp", "user", "compile_cache"):
            (self.work / sub).mkdir()
        self.port = self.port or free_port()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
               "--temp-directory", str(self.work), "--user-directory", str(self.work / "user"),
               "--database-url", f"sqlite:///{self.work / 'user' / 'comfyui.db'}", *self.extra_args]
        env = {**os.environ, "JAXDIFF_COMPILE_CACHE": str(self.work / "compile_cache"),
               "PYTHONUNBUFFERED": "1", **self.extra_env}
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        atexit.register(self.stop)  # never leave a server behind, even without __exit__
        try:
            self._wait_up(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0

    def _import_failures(self) -> list[str]:
        return [line for line in self._log_lines() if "IMPORT FAILED" in line]

    def _wait_up(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfySetupError(f"ComfyUI exited during startup (rc {self.proc.returncode}):\n"
                                      + self.log_tail(80))
            if failed := self._import_failures():
                raise ComfySetupError("custom node import failed:\n" + "\n".join(failed) + "\n"
                                      + self.log_tail(80))
            try:
                self._get("/system_stats", timeout=2)
                break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ComfySetupError(f"ComfyUI did not answer /system_stats within "
                                      f"{self.startup_timeout:.0f} s:\n" + self.log_tail(80))
            time.sleep(0.5)
        if failed := self._import_failures():
            raise ComfySetupError("custom node import failed:\n" + "\n".join(failed) + "\n" + self.log_tail(80))

    def stop(self, timeout: float = 15.0) -> None:
        """TERM the server by PID, then KILL it if it has not exited within `timeout`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, 15)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(10)
            except ProcessLookupError:
                pass
        self._last_log = self.log_tail(200)
        if self.work is not None and not os.environ.get("JAXDIFF_KEEP_COMFY_DIRS"):
            shutil.rmtree(self.work, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- logs and process stats

    def _log_lines(self) -> list[str]:
        if self.work is None or not self.log_path.exists():
            return getattr(self, "_last_log", "").splitlines()
        return self.log_path.read_text(errors="replace").splitlines()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self._log_lines()[-n:])

    def rss(self) -> int:
        """Resident set size of the server process, bytes."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    # -- HTTP

    def _request(self, path: str, data: Any = None, timeout: float = 30) -> tuple[int, Any]:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base_url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def _get(self, path: str, timeout: float = 30) -> Any:
        status, body = self._request(path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {str(body)[:2000]}")
        return body

    def system_stats(self) -> dict:
        return self._get("/system_stats")

    def object_info(self, node: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node> ({node: info})."""
        return self._get("/object_info" + (f"/{node}" if node else ""))

    def queue(self) -> dict:
        return self._get("/queue")

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (the running prompt, or only `prompt_id` if given)."""
        status, body = self._request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise RuntimeError(f"POST /interrupt: HTTP {status}: {body}")

    def wait_idle(self, timeout: float = 300) -> bool:
        """True once nothing is running or pending (False on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = self.queue()
            if not q.get("queue_running") and not q.get("queue_pending"):
                return True
            time.sleep(0.25)
        return False

    # -- prompts

    def run(self, workflow: dict, timeout: float = 300,
            on_message: Callable[[dict], None] | None = None) -> Result:
        """Queue an API-format `workflow`, follow /ws until it finishes, return its Result.

        `on_message(msg)` is called with each websocket message of this prompt (e.g. to interrupt on
        the first "progress"). Raises TimeoutError (with the log tail) after `timeout` s; a prompt
        refused by validation is a Result with status "rejected"."""
        if not self.alive:
            raise ComfySetupError("the ComfyUI server is not running:\n" + self.log_tail(80))
        result = asyncio.run(self._run(workflow, timeout, on_message))
        if result.status != "success":
            result.log_tail = self.log_tail(40)
        return result

    async def _run(self, workflow: dict, timeout: float, on_message) -> Result:
        import aiohttp

        client_id = uuid.uuid4().hex
        t0 = time.monotonic()
        deadline = t0 + timeout
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{self.base_url}/ws?clientId={client_id}", max_msg_size=0)
            try:
                async with session.post(f"{self.base_url}/prompt",
                                        json={"prompt": workflow, "client_id": client_id}) as r:
                    status = r.status
                    text = await r.text()
                try:
                    body = json.loads(text)
                except json.JSONDecodeError:
                    body = {"error": text}
                if status == 400:
                    return Result("rejected", body=body, elapsed=time.monotonic() - t0)
                if status != 200 or "prompt_id" not in body:
                    raise RuntimeError(f"POST /prompt: HTTP {status}: {text[:2000]}")
                prompt_id = body["prompt_id"]
                result = Result("", prompt_id=prompt_id, body=body)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; ws: "
                                           f"{result.message_types[-20:]}\n" + self.log_tail(60))
                    try:
                        msg = await ws.receive(timeout=min(left, 1.0))
                    except asyncio.TimeoutError:
                        if not self.alive:
                            raise ComfySetupError("the ComfyUI server died:\n" + self.log_tail(80))
                        continue
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.ERROR):
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    d = json.loads(msg.data)
                    data = d.get("data") or {}
                    if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                        continue
                    result.messages.append(d)
                    if on_message is not None:
                        on_message(d)
                    kind = d.get("type")
                    if kind == "execution_error":
                        result.error = data
                        break
                    if kind == "execution_interrupted":
                        result.interrupted = data
                        break
                    if kind == "executing" and data.get("node") is None:
                        break
            finally:
                await ws.close()
            # /history has the prompt once the worker filed it (just after the last ws message)
            while True:
                async with session.get(f"{self.base_url}/history/{prompt_id}") as r:
                    hist = (await r.json()).get(prompt_id)
                status_str = ((hist or {}).get("status") or {}).get("status_str")
                if status_str in ("success", "error"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prompt {prompt_id}: no /history entry after {timeout:.0f} s\n"
                                       + self.log_tail(60))
                await asyncio.sleep(0.1)
        result.status = status_str
        result.history = hist
        result.outputs = hist.get("outputs") or {}
        for event, data in (hist.get("status") or {}).get("messages") or []:
            if event == "execution_error" and result.error is None:
                result.error = data
            if event == "execution_interrupted" and result.interrupted is None:
                result.interrupted = data
        result.files = self._output_files(result.outputs)
        result.elapsed = time.monotonic() - t0
        return result

    def _output_files(self, outputs: dict) -> list[Path]:
        files = []
        for node_out in outputs.values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        base = {"output": self.output_dir, "input": self.input_dir}.get(
                            item.get("type", "output"), self.temp_dir)
                        files.append((base / item.get("subfolder", "") / item["filename"]).absolute())
        return files


# ----------------------------------------------------------------------------- output checks


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG; AssertionError if it is not one."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG ({data[:16]!r})"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_video_file(path: Path) -> str:
    """The container ("webm" / "webp" / "mp4") of a non-empty video file; AssertionError otherwise."""
    data = Path(path).read_bytes()
    assert len(data) > 32, f"{path} is empty or truncated ({len(data)} bytes)"
    if data[:4] == WEBM_MAGIC:
        return "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        return "mp4"
    raise AssertionError(f"{path}: unknown video container (magic {data[:12]!r})")


def read_png(path: Path):
    """The PNG's pixels as a uint8 numpy array [H, W, C] (after checking the magic)."""
    import numpy as np
    from PIL import Image

    png_size(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_video(path: Path):
    """All frames of a video file as uint8 numpy [T, H, W, 3] (PyAV; webm, webp or mp4)."""
    import numpy as np

    kind = check_video_file(path)
    if kind == "webp":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ----------------------------------------------------------------------------- tiny model files

FLUX_TEXT_WIDTH = 32  # T5 context width of the tiny Flux (TinyConditioning width)
FLUX_POOLED_WIDTH = 64  # CLIP-L pooled width (TinyConditioning pooled_width; text_fixtures.CLIP_WIDTH)
WAN_TEXT_WIDTH = 32  # UMT5 width of the tiny Wan models
WAN_LATENT_CHANNELS = {"t2v": 16, "i2v": 16, "ti2v": 48}  # Wan 2.1 VAE z 16; Wan 2.2 VAE z 48
WAN_IN_CHANNELS = {"t2v": 16, "i2v": 36, "ti2v": 48}  # i2v: noise 16 + mask 4 + image latent 16
CLIP_VISION_WIDTH = 1280  # ComfyUI fixes Wan's img_emb input width
# LDM VAE with 4 levels (8× down, as ComfyUI's Flux latents assume), 32-channel levels (LDM GroupNorm 32).
TINY_FLUX_VAE = dict(double_z=True, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def _comfy_root(comfy_root) -> Path:
    """A directory with ComfyUI's `comfy` package for building the reference modules."""
    if comfy_root is not None:
        return Path(comfy_root)
    for candidate in (comfyui_dir(), Path("/tmp/comfyui")):
        if (candidate / "comfy" / "ldm" / "flux" / "model.py").is_file():
            return candidate
    from comfy_fixtures import comfyui_root

    return comfyui_root(Path(tempfile.mkdtemp(prefix="jaxdiff-comfy-src-")))


def _save(state: dict, path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.detach().float().contiguous() for k, v in state.items()}, str(path))
    return path


def write_tiny_flux(path, guidance_embed: bool = True, *, latent_channels: int = 16, seed: int = 0,
                    comfy_root=None) -> Path:
    """A tiny BFL Flux (ComfyUI's `comfy.ldm.flux.model.Flux`, head dim 128, axes (16, 56, 56)) saved
    as ComfyUI does (`model.diffusion_model.` prefix, fp32 safetensors). `latent_channels` 16 fits core
    EmptySD3LatentImage and the tiny Flux VAE; 4 is comfy_fixtures.TINY_BFL as is."""
    import torch

    from comfy_fixtures import COMFY_PREFIX, TINY_BFL, import_comfy_flux
    from flux_fixtures import randomize_

    Flux, ops = import_comfy_flux(_comfy_root(comfy_root))
    config = {**TINY_BFL, "in_channels": latent_channels, "out_channels": latent_channels,
              "context_in_dim": FLUX_TEXT_WIDTH, "vec_in_dim": FLUX_POOLED_WIDTH}
    torch.manual_seed(seed)
    model = Flux(**config, guidance_embed=guidance_embed, operations=ops.disable_weight_init,
                 dtype=torch.float32)
    randomize_(model, seed, 0.05)
    return _save(model.state_dict(), path, COMFY_PREFIX)


def write_tiny_wan(path, variant: str = "t2v", *, seed: int = 0, num_layers: int = 1,
                   comfy_root=None) -> Path:
    """A tiny Comfy-Org Wan single file (ComfyUI's `comfy.ldm.wan.model.WanModel`, dim 128 = 1 head,
    bare key names like the repackaged files) whose channels fit ComfyUI's latents:
    "t2v" (Wan 2.1 / 2.2 A14B: 16 in / out), "i2v" (Wan 2.1 I2V: 36 in = 16 + 4 mask + 16 image,
    CLIP-vision width 1280), "ti2v" (Wan 2.2 TI2V-5B: 48 in / out). Text width WAN_TEXT_WIDTH."""
    from wan_comfy_fixtures import tiny_comfy_wan

    if variant not in WAN_IN_CHANNELS:
        raise ValueError(f"variant must be one of {sorted(WAN_IN_CHANNELS)}, got {variant!r}")
    model = tiny_comfy_wan(_comfy_root(comfy_root), variant, seed=seed, in_dim=WAN_IN_CHANNELS[variant],
                           out_dim=WAN_LATENT_CHANNELS[variant], text_dim=WAN_TEXT_WIDTH,
                           num_layers=num_layers)
    return _save(model.state_dict(), path)


def write_tiny_flux_vae(path, *, latent_channels: int = 16, seed: int = 0, comfy_root=None) -> Path:
    """A tiny Flux `ae.safetensors` (ComfyUI's LDM AutoencodingEngine, no quant convs, 8× down,
    `latent_channels` z channels), bare LDM key names."""
    import torch

    from comfy_fixtures import import_comfy_flux
    from vae_fixtures import randomize_vae_

    import_comfy_flux(_comfy_root(comfy_root))
    import comfy.ldm.models.autoencoder as autoencoder

    ddconfig = {**TINY_FLUX_VAE, "z_channels": latent_channels}
    torch.manual_seed(seed)
    model = autoencoder.AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    randomize_vae_(model, seed)
    return _save(model.state_dict(), path)


def write_tiny_wan_vae(path, *, seed: int = 0, comfy_root=None) -> Path:
    """A tiny Wan 2.1 VAE file (ComfyUI's `comfy.ldm.wan.vae.WanVAE`: 8× down, 4× in time, z 16)."""
    from wan_comfy_fixtures import tiny_comfy_wan_vae

    return _save(tiny_comfy_wan_vae(_comfy_root(comfy_root), seed, z_dim=16).state_dict(), path)


def write_tiny_wan22_vae(path, *, seed: int = 0, comfy_root=None) -> Path:
    """A tiny Wan 2.2 VAE file (ComfyUI's `comfy.ldm.wan.vae2_2.WanVAE`: 16× down incl. the 2×2
    patchify, 4× in time, z 48)."""
    from wan_comfy_fixtures import tiny_comfy_wan22_vae

    return _save(tiny_comfy_wan22_vae(_comfy_root(comfy_root), seed).state_dict(), path)


def write_junk_safetensors(path, seed: int = 0) -> Path:
    """A valid safetensors file whose keys are neither Flux nor Wan (nor a VAE)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return _save({"junk.layer0.weight": torch.randn(8, 8, generator=gen),
                  "junk.layer1.bias": torch.randn(8, generator=gen)}, path)


# ----------------------------------------------------------------------------- smoke check


def main() -> int:
    t0 = time.monotonic()
    root = ensure_comfyui()
    print(f"ComfyUI root {root} ready in {time.monotonic() - t0:.1f} s")
    with ComfyServer(root) as server:
        print(f"server pid {server.pid} on port {server.port}, up in {server.startup_s:.1f} s")
        wf = {"1": {"class_type": "TinyImage", "inputs": {"size": 24, "frames": 1, "seed": 0}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                          "filename_prefix": f"smoke_{uuid.uuid4().hex[:8]}"}}}
        result = server.run(wf, timeout=60).check()
        print(f"OK {result.files} {png_size(result.files[0])} in {result.elapsed:.1f} s, "
              f"rss {server.rss() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
