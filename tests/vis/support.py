"""Real servers and clients for the vis tests: the gateway over HTTP, NGINX with the noVNC
snippet, headless Chromium driven over the DevTools protocol, and an RFB client that does
VNC authentication over websockify's websocket. Everything listens on 127.0.0.1 and is
stopped by its context manager, with a deadline on every wait.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOVNC_SNIPPET = ROOT / "deploy" / "nginx" / "hpc-gateway-novnc.conf"
NOVNC_DIR = Path("/usr/share/novnc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - not there yet
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left, and reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


# ----------------------------------------------------------------------------- gateway
@contextlib.contextmanager
def serve_app(app):
    """The app on a real threaded HTTP server on a free loopback port; yields its base URL."""
    import logging

    from werkzeug.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # no line per request in the test output
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="gateway-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


# ----------------------------------------------------------------------------- nginx
def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@contextlib.contextmanager
def nginx(tmp: Path, gateway_url: str, api_prefix: str = "/aip/v9.2"):
    """A private NGINX: the API proxied to the gateway, noVNC from deploy/nginx. Yields its URL."""
    for sub in ("logs", "temp"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp}/logs/access.log;
    client_body_temp_path {tmp}/temp/body;
    proxy_temp_path {tmp}/temp/proxy;
    fastcgi_temp_path {tmp}/temp/fastcgi;
    uwsgi_temp_path {tmp}/temp/uwsgi;
    scgi_temp_path {tmp}/temp/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location {api_prefix}/ {{
            proxy_pass {gateway_url};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
        include {NOVNC_SNIPPET};
    }}
}}
""")
    binary = nginx_binary()
    check = subprocess.run([binary, "-t", "-p", str(tmp), "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"nginx -t refused the configuration:\n{check.stderr}"
    log = open(tmp / "logs" / "stdout.log", "ab")
    proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    try:
        def up():
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        wait_until(up, 15, "nginx to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


# ----------------------------------------------------------------------------- RFB
def _vnc_key(password: str) -> bytes:
    """VNC authentication's DES key: the password's 8 bytes, each bit-reversed."""
    raw = password.encode()[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def _des_ecb(key: bytes, data: bytes) -> bytes:
    import warnings
    from cryptography.hazmat.primitives.ciphers import Cipher, modes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        except ImportError:        # cryptography < 43
            from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
        enc = Cipher(TripleDES(key), modes.ECB()).encryptor()  # one 8-byte key: single DES
    return enc.update(data) + enc.finalize()


def rfb_auth(ws_url: str, password: str, timeout: float = 10, sslopt: dict | None = None) -> tuple[int, str]:
    """RFB 3.8 VNC authentication over a websocket; returns (SecurityResult, reason).
    ``sslopt``: websocket-client's TLS options for a wss:// address (e.g. ca_certs)."""
    import websocket
    ws = websocket.create_connection(ws_url, subprotocols=["binary"], timeout=timeout, suppress_origin=True,
                                     sslopt=sslopt)
    buf = bytearray()

    def read(n):
        while len(buf) < n:
            data = ws.recv()
            if not data:
                raise ConnectionError("websocket closed during the RFB handshake")
            buf.extend(data if isinstance(data, bytes) else data.encode())
        out = bytes(buf[:n])
        del buf[:n]
        return out

    try:
        version = read(12)
        assert version.startswith(b"RFB "), version
        ws.send_binary(b"RFB 003.008\n")
        count = read(1)[0]
        types = list(read(count))
        assert 2 in types, f"the server does not offer VNC authentication: {types}"
        assert 1 not in types, "the server offers no-authentication access"
        ws.send_binary(bytes([2]))
        challenge = read(16)
        ws.send_binary(_des_ecb(_vnc_key(password), challenge))
        result = int.from_bytes(read(4), "big")
        reason = ""
        if result != 0:
            with contextlib.suppress(Exception):
                reason = read(int.from_bytes(read(4), "big")).decode(errors="replace")
        return result, reason
    finally:
        ws.close()


# ----------------------------------------------------------------------------- Chromium
def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float, what: str):
        return wait_until(lambda: self.eval(expression), timeout, what, interval=0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


class Chromium:
    """Headless Chromium with the DevTools protocol on a loopback port."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port

    def new_page(self) -> Page:
        import requests
        r = requests.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=10)
        r.raise_for_status()
        return Page(r.json()["webSocketDebuggerUrl"])


@contextlib.contextmanager
def chromium(tmp: Path, width: int = 1280, height: int = 860):
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)     # a previous run's port
    argv = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--window-size={width},{height}", "about:blank"]
    log = open(tmp / "chromium.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    try:
        def port():
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited with {proc.returncode}: "
                                     + (tmp / "chromium.log").read_text(errors="replace")[-2000:])
            text = (profile / "DevToolsActivePort").read_text().split()
            return int(text[0]) if text else None
        yield Chromium(proc, wait_until(port, 30, "chromium's DevTools port"))
    finally:
        stop_process(proc)


def canvas_stats(png: bytes, rect: dict | None = None) -> dict:
    """Grey-level mean and standard deviation of the screenshot (within ``rect``), and colours."""
    import io

    from PIL import Image, ImageStat
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if rect:
        box = (max(0, int(rect["x"])), max(0, int(rect["y"])),
               min(image.width, int(rect["x"] + rect["width"])), min(image.height, int(rect["y"] + rect["height"])))
        image = image.crop(box)
    grey = ImageStat.Stat(image.convert("L"))
    colours = image.getcolors(maxcolors=1 << 20)
    return {"mean": grey.mean[0], "stddev": grey.stddev[0], "colours": len(colours) if colours else 1 << 20,
            "size": image.size}


# ----------------------------------------------------------------------------- processes
def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def processes_named(name: str, user: str | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose executable's name is ``name``."""
    found = []
    uid = pwd.getpwnam(user).pw_uid if user else None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            st = os.stat(f"/proc/{entry}")
        except OSError:
            continue
        if uid is not None and st.st_uid != uid:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if not words:
            continue
        exe = [os.path.basename(w) for w in words[:2]]
        if name in exe and process_alive(int(entry)):
            found.append((int(entry), " ".join(words)))
    return found
