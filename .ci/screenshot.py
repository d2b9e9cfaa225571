"""Screenshot of a workflow in ComfyUI's real frontend: starts a ComfyUI server (CPU) with this node pack,
opens it in headless Chromium, loads the graph-format workflow into the canvas and saves a PNG.

    python .ci/screenshot.py --comfy-dir /tmp/comfyui --python .venv/bin/python \\
        --workflow example_workflows/flux_dev_t2i.json --out docs/comfyui-flux.png

- The server runs with a fresh `--base-directory` (a temp dir): its custom_nodes/ holds only a link to
  this pack (--pack, default the repo root), so the ComfyUI checkout and its user settings stay untouched.
- Browser: Debian's Chromium (`apt-get install -y chromium`; installed here when missing and we are root),
  driven with the `playwright` package (`pip install playwright`) through `executable_path` — no
  browser download (`playwright install` is never needed).
- --compare-api also checks the frontend's own conversion (`app.graphToPrompt()`) against the
  `<name>_api.json` beside the workflow, input for input.
- Fails (exit 1) when a node type of the workflow is not registered on the server (it would render as
  a red "missing" node), unless --allow-missing-nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
# First-run dialogs off; missing files/nodes are reported by this script instead of a dialog.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Minimap.Visible": False,
}


def log(msg):
    print(f"[screenshot] {msg}", file=sys.stderr, flush=True)


def find_chromium(install):
    for path in (os.environ.get("CHROMIUM"), shutil.which("chromium"), *CHROMIUM_CANDIDATES):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    cmd = ["apt-get", "install", "-y", "chromium"]
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"Chromium not found; install it with: {' '.join(cmd)}")
        return None
    log(f"Chromium not found; running {' '.join(cmd)}")
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update"], stdout=subprocess.DEVNULL)
        subprocess.run(cmd, stdout=subprocess.DEVNULL)
    return next((p for p in (shutil.which("chromium"), *CHROMIUM_CANDIDATES) if p and os.path.isfile(p)), None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, timeout=10):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


class Server:
    """A ComfyUI server in a subprocess, stopped by its PID."""

    def __init__(self, comfy_dir, python, port, base_dir, log_path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base_dir)]
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=self.log_file, stderr=subprocess.STDOUT)
        log(f"server pid {self.proc.pid} on {self.url}, log {log_path}")

    def wait_up(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                http(f"{self.url}/system_stats", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server not up after {timeout} s; see {self.log_path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def make_base_dir(base, pack, comfy_dir):
    """A --base-directory with custom_nodes/<pack> linked and ComfyUI's sample input image."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "jaxdiff"
    if not link.exists():
        link.symlink_to(pack, target_is_directory=True)
    (base / "input").mkdir(exist_ok=True)
    for sample in (Path(comfy_dir) / "input").glob("example.png"):
        shutil.copy(sample, base / "input" / sample.name)


# JavaScript run in the page -------------------------------------------------------------------------

JS_READY = "() => !!(window.app && window.app.graph && window.app.canvas && window.app.loadGraphData)"

JS_LOAD = """async ([wf, name]) => {
  await window.app.loadGraphData(wf, true, true, name);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const registered = window.LiteGraph?.registered_node_types ?? {};
  return window.app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title,
      registered: n.type in registered, size: [n.size[0], n.size[1]],
      computed: n.computeSize ? Array.from(n.computeSize()) : null}));
}"""

# Fit every node into the part of the window the toolbars leave free (the canvas spans the window).
JS_FIT = """([left, top, right, bottom, margin]) => {
  const c = window.app.canvas, nodes = window.app.graph.nodes;
  const th = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - th);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const rect = c.canvas.getBoundingClientRect();  // window coordinates of the canvas element
  const w = window.innerWidth - left - right - 2 * margin, h = window.innerHeight - top - bottom - 2 * margin;
  const scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1.25);
  c.ds.scale = scale;
  c.ds.offset = [(left - rect.left + margin + (w - (x1 - x0) * scale) / 2) / scale - x0,
                 (top - rect.top + margin + (h - (y1 - y0) * scale) / 2) / scale - y0];
  c.deselectAll?.();
  c.setDirty(true, true);
  return scale;
}"""

JS_PROMPT = "async () => (await window.app.graphToPrompt()).output"

JS_DIALOGS = """() => Array.from(document.querySelectorAll('.p-dialog, [role=dialog]'))
  .filter(d => d.offsetParent !== null).map(d => (d.innerText || '').slice(0, 120))"""

JS_TOASTS = """() => Array.from(document.querySelectorAll('.p-toast-message'))
  .map(t => (t.innerText || '').replace(/\\s+/g, ' ').slice(0, 300))"""

JS_CLOSE_DIALOGS = """() => { for (const b of document.querySelectorAll(
    '.p-dialog .p-dialog-close-button, .p-dialog-header-close, [role=dialog] button[aria-label=Close]')) b.click(); }"""


def compare_prompts(frontend, api):
    """Differences between the frontend's graphToPrompt output and an API-format file."""
    problems = []
    if set(frontend) != set(api):
        problems.append(f"node ids: frontend {sorted(frontend, key=int)} vs file {sorted(api, key=int)}")
    for node_id in sorted(set(frontend) & set(api), key=int):
        a, b = frontend[node_id], api[node_id]
        if a.get("class_type") != b.get("class_type"):
            problems.append(f"node {node_id}: class_type {a.get('class_type')} vs {b.get('class_type')}")
            continue
        ai, bi = a.get("inputs", {}), b.get("inputs", {})
        for k in sorted(set(ai) | set(bi)):
            if ai.get(k, "<absent>") != bi.get(k, "<absent>"):
                problems.append(f"node {node_id} ({a['class_type']}).{k}: frontend {ai.get(k, '<absent>')!r} "
                                f"vs file {bi.get(k, '<absent>')!r}")
    return problems


def shoot(args, server_url, workflow, out):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        log(f"the playwright package is missing; install it with: {sys.executable} -m pip install playwright")
        return 2
    chromium = find_chromium(install=not args.no_install)
    if not chromium:
        return 2
    object_info = http(f"{server_url}/object_info", timeout=60)
    wanted = {n["type"] for n in workflow["nodes"]} - FRONTEND_ONLY
    missing = sorted(wanted - set(object_info))
    if missing:
        log(f"node types not registered on the server (they render as missing): {missing}")
    http(f"{server_url}/settings", SETTINGS)

    rc = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # (user.css and a fresh user dir's userdata answer 404 normally; the console repeats each failed
            # request without its URL)
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("user.css") and "/api/userdata" not in r.url
                    else None)
            page.goto(server_url + "/", wait_until="domcontentloaded", timeout=args.timeout * 1000)
            page.wait_for_function(JS_READY, timeout=args.timeout * 1000)
            page.wait_for_load_state("networkidle", timeout=args.timeout * 1000)
            page.keyboard.press("Escape")
            startup_errors, errors[:] = list(errors), []
            if startup_errors:  # the frontend's own, before any workflow is loaded
                log(f"page errors while the frontend started: {startup_errors[:5]}")
            nodes = page.evaluate(JS_LOAD, [workflow, Path(args.workflow).stem])
            scale = page.evaluate(JS_FIT, [48, 84, 8, 60, 12])
            log(f"canvas scale {scale:.2f}")
            page.wait_for_timeout(args.settle_ms)
            toasts = page.evaluate(JS_TOASTS)  # the frontend's workflow validation reports here
            for t in toasts:
                log(f"frontend message: {t}")
            for _ in range(3):  # any dialog the frontend opened (missing models/nodes, templates)
                dialogs = page.evaluate(JS_DIALOGS)
                if not dialogs:
                    break
                log(f"closing dialog(s): {dialogs}")
                page.keyboard.press("Escape")
                page.evaluate(JS_CLOSE_DIALOGS)
                page.wait_for_timeout(300)
            page.mouse.move(args.width - 5, args.height // 2)  # no hover highlight on a node
            page.wait_for_timeout(200)
            unregistered = sorted({n["type"] for n in nodes if not n["registered"]} - FRONTEND_ONLY)
            log(f"{len(nodes)} nodes on the canvas" + (f"; unregistered: {unregistered}" if unregistered else ""))
            if args.verbose:  # (the frontend grows a node to its minimum on load)
                for n in nodes:
                    log(f"  node {n['id']} {n['type']}: size {n['size']}, minimum {n['computed']}")
            if args.compare_api:
                api_path = Path(args.workflow).with_name(Path(args.workflow).stem + "_api.json")
                problems = compare_prompts(page.evaluate(JS_PROMPT), json.loads(api_path.read_text()))
                for msg in problems:
                    log(f"graphToPrompt vs {api_path.name}: {msg}")
                log(f"graphToPrompt matches {api_path.name}" if not problems else "graphToPrompt differs")
                rc = rc or (1 if problems else 0)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            log(f"wrote {out} ({args.width}x{args.height})")
            if errors:
                log(f"page errors after loading the workflow: {errors[:5]}")
            if (missing or unregistered) and not args.allow_missing_nodes:
                log("FAIL: the screenshot shows missing nodes (--allow-missing-nodes to accept)")
                rc = 1
        finally:
            browser.close()
    return rc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-dir", required=True, help="ComfyUI checkout (has main.py)")
    ap.add_argument("--python", default=sys.executable, help="interpreter with ComfyUI's and the pack's requirements")
    ap.add_argument("--workflow", required=True, help="graph-format workflow (.json the frontend loads)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--pack", default=str(REPO), help="node pack linked into custom_nodes (default: this repo)")
    ap.add_argument("--server", help="use this running server instead of starting one")
    ap.add_argument("--port", type=int, default=0, help="port for the server (default: a free one)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--timeout", type=int, default=180, help="seconds for server start and page load")
    ap.add_argument("--settle-ms", type=int, default=1500, help="wait after loading before the screenshot")
    ap.add_argument("--compare-api", action="store_true", help="check graphToPrompt() against <name>_api.json")
    ap.add_argument("--allow-missing-nodes", action="store_true", help="exit 0 even if nodes render as missing")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install chromium")
    ap.add_argument("--keep", action="store_true", help="keep the temp base directory (server log)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    workflow = json.loads(Path(args.workflow).read_text())
    out = Path(args.out)
    if args.server:
        return shoot(args, args.server.rstrip("/"), workflow, out)
    if not (Path(args.comfy_dir) / "main.py").is_file():
        log(f"no main.py in {args.comfy_dir}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="jaxdiff-screenshot-"))
    server = None
    try:
        make_base_dir(base, Path(args.pack).resolve(), args.comfy_dir)
        python = os.path.abspath(args.python) if os.sep in args.python else args.python  # the server runs in comfy-dir
        server = Server(Path(args.comfy_dir).resolve(), python, args.port or free_port(), base,
                        base / "server.log")
        server.wait_up(args.timeout)
        failed = [line.strip() for line in open(server.log_path) if "IMPORT FAILED" in line]
        if failed:
            log(f"custom node import failures: {failed}")
        return shoot(args, server.url, workflow, out)
    except RuntimeError as e:
        log(str(e))
        return 1
    finally:
        if server:
            server.stop()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
