"""A tiny HTTP MJPEG (multipart/x-mixed-replace) camera for capture tests.

Run as a separate process so a test can stop it (a camera or encoder that goes away)
and start it again on the same port:

    python -m tests.appliance.stream_server --port 0 --fps 20

It prints `PORT <n>` on stdout once it listens, then serves `/stream.mjpg`: frames of
`--width` x `--height` pixels whose top-left pixel encodes the frame number (mod 256), and
`/` with 404. Every client gets its own frame counter starting at 0.
"""

from __future__ import annotations

import argparse
import http.server
import sys
import time

import cv2
import numpy as np

BOUNDARY = "lineguardframe"


def _frame_jpeg(n: int, width_px: int, height_px: int) -> bytes:
    img = np.full((height_px, width_px, 3), 40, np.uint8)
    cv2.putText(img, str(n), (4, height_px - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2)
    img[0:8, 0:8] = n % 256
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("imencode failed")
    return bytes(buf.tobytes())


def make_handler(
    fps: float, width_px: int, height_px: int
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

        def do_GET(self) -> None:
            if self.path != "/stream.mjpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            n = 0
            try:
                while True:
                    jpeg = _frame_jpeg(n, width_px, height_px)
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
                    )
                    self.wfile.write(jpeg)
                    self.wfile.write(b"\r\n")
                    self.wfile.flush()
                    n += 1
                    time.sleep(1.0 / fps)
            except (BrokenPipeError, ConnectionResetError):
                return

    return Handler


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=48)
    a = p.parse_args(argv)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", a.port), make_handler(a.fps, a.width, a.height)
    )
    server.daemon_threads = True
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
