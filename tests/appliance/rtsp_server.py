"""A real RTSP camera for capture tests: GStreamer's RTSP server serving H.264.

Run by the *system* Python (`/usr/bin/python3`, which has `python3-gi`; the test venv
does not) as a separate process, so a test can kill it (the camera goes away) and start
it again on the same port:

    /usr/bin/python3 tests/appliance/rtsp_server.py --port 0 --fps 20

It prints `PORT <n>` on stdout once it listens and serves `rtsp://127.0.0.1:<n>/cam`: a
live `videotestsrc` of `--width` x `--height` pixels, encoded with `openh264enc` (H.264
baseline, as plant cameras send it) and packetised by `rtph264pay`. Every client gets its
own pipeline (the media is not shared), so each connection starts with a key frame.

Debian packages: `python3-gi` and `gir1.2-gst-rtsp-server-1.0` (which pulls in
gstreamer1.0-plugins-base/-good/-bad: videotestsrc, videoconvert, openh264enc,
h264parse, rtph264pay). `--check` exits 0 if all of that is present, else 1 with the
missing piece on stderr (tests skip on it).

This file must stay importable by that Python alone: standard library and gi only.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

ELEMENTS = ("videotestsrc", "videoconvert", "openh264enc", "h264parse", "rtph264pay")
MOUNT = "/cam"


def _load_gi() -> tuple[Any, Any, Any]:
    """(Gst, GstRtspServer, GLib), or raises ImportError/ValueError naming what is missing."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        raise ImportError(f"GStreamer elements missing: {', '.join(missing)}")
    return Gst, GstRtspServer, GLib


def launch_line(fps: int, width_px: int, height_px: int) -> str:
    return (
        f"( videotestsrc is-live=true pattern=smpte "
        f"! video/x-raw,width={width_px},height={height_px},framerate={fps}/1 "
        f"! videoconvert ! openh264enc gop-size={fps} "
        f"! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fps", type=int, default=20)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--check", action="store_true",
                   help="only check that python3-gi and the GStreamer pieces are there")
    a = p.parse_args(argv)
    try:
        _gst, rtsp, glib = _load_gi()
    except (ImportError, ValueError) as e:
        sys.stderr.write(f"rtsp_server: {e}\n")
        return 1
    if a.check:
        return 0

    server = rtsp.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    factory = rtsp.RTSPMediaFactory()
    factory.set_launch(launch_line(a.fps, a.width, a.height))
    factory.set_shared(False)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        sys.stderr.write(f"rtsp_server: cannot listen on 127.0.0.1:{a.port}\n")
        return 1
    loop = glib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        glib.unix_signal_add(glib.PRIORITY_DEFAULT, sig, loop.quit)
    sys.stdout.write(f"PORT {server.get_bound_port()}\n")
    sys.stdout.flush()
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
