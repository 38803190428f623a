"""Calibration views: boards seen through a known pinhole camera with lens distortion.

Renders chessboard or ChArUco views (for `lineguard calibration camera`) and one view
of the board lying flat on the conveyor at a known distance (for the mm-per-pixel
scale), and writes the camera's truth as ``truth.json`` with the keys of a
``camera.json`` (fx, fy, cx, cy, dist = k1, k2, p1, p2, k3, image_size, rms_px) plus
the scale on the conveyor plane (``mm_per_px``, in undistorted pixels).

Rendering is exact inverse mapping: every output pixel (2x supersampled, then
averaged) is undistorted with the true model (fixed-point iteration, as OpenCV's
``undistortPoints`` does, but to 1e-12), intersected with the board plane, and the
board texture is sampled there. So the corners' true image positions are the forward
projection (`project`) of the board points, to well under 0.01 px.

linesim imports nothing of lineguard's: numpy and OpenCV only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from linesim.config import ConfigError

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

_SUPERSAMPLE = 2
_TEXTURE_PX_PER_MM = 12.0
_CONVEYOR_GREY = 70


@dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera with OpenCV's distortion model (k1, k2, p1, p2, k3)."""

    fx: float = 700.0
    fy: float = 700.0
    cx: float = 320.0
    cy: float = 240.0
    k1: float = -0.25
    k2: float = 0.08
    p1: float = 0.001
    p2: float = -0.0008
    k3: float = 0.0
    width_px: int = 640
    height_px: int = 480

    def __post_init__(self) -> None:
        if not (64 <= self.width_px <= 8192 and 64 <= self.height_px <= 8192):
            raise ConfigError("linesim: image size must be 64..8192 px per side")
        if not (0 < self.fx < 1e5 and 0 < self.fy < 1e5):
            raise ConfigError("linesim: fx and fy must be > 0")
        if not (0 <= self.cx <= self.width_px and 0 <= self.cy <= self.height_px):
            raise ConfigError("linesim: principal point must lie inside the image")
        if any(abs(v) > 5 for v in (self.k1, self.k2, self.p1, self.p2, self.k3)):
            raise ConfigError("linesim: distortion coefficients must be within +-5")

    @property
    def matrix(self) -> F64:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    @property
    def dist(self) -> F64:
        return np.array([self.k1, self.k2, self.p1, self.p2, self.k3], np.float64)

    def distort(self, xn: F64, yn: F64) -> tuple[F64, F64]:
        """Normalised undistorted coordinates -> normalised distorted ones."""
        r2 = xn * xn + yn * yn
        radial = 1 + self.k1 * r2 + self.k2 * r2 * r2 + self.k3 * r2 * r2 * r2
        xd = xn * radial + 2 * self.p1 * xn * yn + self.p2 * (r2 + 2 * xn * xn)
        yd = yn * radial + self.p1 * (r2 + 2 * yn * yn) + 2 * self.p2 * xn * yn
        return xd, yd

    def undistort(self, xd: F64, yd: F64, iterations: int = 25) -> tuple[F64, F64]:
        """Normalised distorted -> undistorted coordinates (fixed-point iteration)."""
        xn, yn = xd.copy(), yd.copy()
        for _ in range(iterations):
            r2 = xn * xn + yn * yn
            radial = 1 + self.k1 * r2 + self.k2 * r2 * r2 + self.k3 * r2 * r2 * r2
            dx = 2 * self.p1 * xn * yn + self.p2 * (r2 + 2 * xn * xn)
            dy = self.p1 * (r2 + 2 * yn * yn) + 2 * self.p2 * xn * yn
            xn, yn = (xd - dx) / radial, (yd - dy) / radial
        return xn, yn

    def project(self, points_cam: F64) -> F64:
        """[N, 3] points in camera coordinates (mm) -> [N, 2] distorted pixels."""
        xn = points_cam[:, 0] / points_cam[:, 2]
        yn = points_cam[:, 1] / points_cam[:, 2]
        xd, yd = self.distort(xn, yn)
        return np.stack((self.fx * xd + self.cx, self.fy * yd + self.cy), axis=1)

    def truth(self) -> dict[str, object]:
        """The camera.json keys for this camera."""
        return {
            "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
            "dist": [self.k1, self.k2, self.p1, self.p2, self.k3],
            "image_size": [self.width_px, self.height_px], "rms_px": 0.0,
        }


@dataclass(frozen=True)
class BoardSpec:
    """A planar target. `cols` x `rows` are the chessboard's inner corners; a ChArUco
    board has (cols + 1) x (rows + 1) squares. Board coordinates in mm, origin at the
    outer corner of the square grid, z = 0 on the board."""

    kind: str = "chessboard"
    cols: int = 9
    rows: int = 6
    square_mm: float = 10.0
    marker_mm: float = 7.5
    aruco_dict: str = "DICT_4X4_50"

    def __post_init__(self) -> None:
        if self.kind not in {"chessboard", "charuco"}:
            raise ConfigError(
                f"linesim: board kind must be chessboard or charuco, not {self.kind!r}")
        if not (2 <= self.cols <= 40 and 2 <= self.rows <= 40):
            raise ConfigError("linesim: board needs 2..40 inner corners per side")
        if not (0 < self.square_mm <= 1000):
            raise ConfigError("linesim: square_mm must be in (0, 1000]")
        if self.kind == "charuco" and not (0 < self.marker_mm < self.square_mm):
            raise ConfigError("linesim: marker_mm must be > 0 and < square_mm")

    @property
    def size_mm(self) -> tuple[float, float]:
        return ((self.cols + 1) * self.square_mm, (self.rows + 1) * self.square_mm)

    def corners_mm(self) -> F64:
        """[cols*rows, 3] inner corners, row-major from the top-left."""
        xs = (np.arange(self.cols) + 1) * self.square_mm
        ys = (np.arange(self.rows) + 1) * self.square_mm
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        return np.concatenate((grid, np.zeros((len(grid), 1))), axis=1)

    def texture(self) -> tuple[U8, float]:
        """(grey texture of the board with a one-square white margin, px per mm);
        texture pixel (u, v) centre is at board mm ((u + 0.5) / ppmm - margin, ...)."""
        ppmm = _TEXTURE_PX_PER_MM
        w_mm, h_mm = self.size_mm
        margin = self.square_mm
        if self.kind == "charuco":
            board = cv2.aruco.CharucoBoard(
                (self.cols + 1, self.rows + 1), self.square_mm, self.marker_mm,
                cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.aruco_dict)))
            size = (round(w_mm * ppmm), round(h_mm * ppmm))
            inner = np.asarray(board.generateImage(size, marginSize=0, borderBits=1), np.uint8)
        else:
            sq = round(self.square_mm * ppmm)
            ii, jj = np.meshgrid(np.arange(self.cols + 1), np.arange(self.rows + 1))
            cells = ((ii + jj) % 2 == 0).astype(np.uint8) * 255
            inner = 255 - np.kron(cells, np.ones((sq, sq), np.uint8))
        m = round(margin * ppmm)
        bordered: U8 = np.asarray(
            cv2.copyMakeBorder(inner, m, m, m, m, cv2.BORDER_CONSTANT, value=255), np.uint8)
        return bordered, ppmm


def _rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> F64:
    rvec = np.radians([rx_deg, ry_deg, rz_deg]).reshape(3, 1)
    r, _ = cv2.Rodrigues(rvec)
    return np.asarray(r, np.float64)


def undistorted_rays(camera: PinholeCamera) -> tuple[F64, F64]:
    """Normalised undistorted (x, y) of every supersampled output pixel centre; the
    same for every view of one camera, so computed once."""
    s = _SUPERSAMPLE
    h, w = camera.height_px * s, camera.width_px * s
    u, v = np.meshgrid((np.arange(w) + 0.5) / s - 0.5, (np.arange(h) + 0.5) / s - 0.5)
    return camera.undistort((u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy)


def render_plane(camera: PinholeCamera, board: BoardSpec, rot: F64, t_mm: F64,
                 background: U8, noise_sigma: float, rng: np.random.Generator,
                 rays: tuple[F64, F64] | None = None) -> U8:
    """Render the board at pose (rot, t_mm) (board -> camera) over `background`;
    `rays` from `undistorted_rays(camera)` saves recomputing them per view."""
    s = _SUPERSAMPLE
    h, w = camera.height_px * s, camera.width_px * s
    xn, yn = rays if rays is not None else undistorted_rays(camera)
    # ray (xn, yn, 1) meets the plane through t with normal r3: X = lambda * ray
    homography = np.column_stack((rot[:, 0], rot[:, 1], t_mm))
    inv = np.linalg.inv(homography)
    bx = inv[0, 0] * xn + inv[0, 1] * yn + inv[0, 2]
    by = inv[1, 0] * xn + inv[1, 1] * yn + inv[1, 2]
    bz = inv[2, 0] * xn + inv[2, 1] * yn + inv[2, 2]
    bx, by = bx / bz, by / bz
    texture, ppmm = board.texture()
    margin = board.square_mm
    map_x = ((bx + margin) * ppmm - 0.5).astype(np.float32)
    map_y = ((by + margin) * ppmm - 0.5).astype(np.float32)
    big_bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_NEAREST)
    sampled = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    inside = ((map_x >= 0) & (map_y >= 0) & (map_x <= texture.shape[1] - 1)
              & (map_y <= texture.shape[0] - 1) & (bz > 0))
    big = np.where(inside, sampled, big_bg).astype(np.float32)
    small = cv2.resize(big, (camera.width_px, camera.height_px), interpolation=cv2.INTER_AREA)
    small = small * 0.8 + 25.0 + rng.normal(0.0, noise_sigma, small.shape)
    out: U8 = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class ViewsConfig:
    """What `write_calibration_views` renders."""

    camera: PinholeCamera = field(default_factory=PinholeCamera)
    board: BoardSpec = field(default_factory=BoardSpec)
    views: int = 20
    seed: int = 0
    noise_sigma: float = 1.0
    conveyor_distance_mm: float = 400.0
    """Distance from the camera centre to the conveyor plane (looking straight down)."""

    def __post_init__(self) -> None:
        if not 1 <= self.views <= 200:
            raise ConfigError("linesim: views must be 1..200")
        if not 0 <= self.noise_sigma <= 50:
            raise ConfigError("linesim: noise_sigma must be 0..50")
        if not 1 <= self.conveyor_distance_mm <= 1e5:
            raise ConfigError("linesim: conveyor_distance_mm must be 1..100000")


def _background(rng: np.random.Generator, camera: PinholeCamera, level: int) -> U8:
    noise = rng.normal(0, 12, (camera.height_px // 8 + 1, camera.width_px // 8 + 1))
    smooth = cv2.resize(noise, (camera.width_px, camera.height_px), interpolation=cv2.INTER_CUBIC)
    return np.clip(level + smooth, 0, 255).astype(np.uint8)


def _poses(cfg: ViewsConfig, rng: np.random.Generator) -> list[tuple[F64, F64]]:
    """Board poses that keep the whole board (with margin) in view, spread over a 3x3
    grid of the frame and tilted up to 30 degrees."""
    cam, board = cfg.camera, cfg.board
    w_mm, h_mm = board.size_mm
    outline = np.array([[-board.square_mm, -board.square_mm, 0], [w_mm + board.square_mm,
                        -board.square_mm, 0], [w_mm + board.square_mm, h_mm + board.square_mm, 0],
                        [-board.square_mm, h_mm + board.square_mm, 0]], np.float64)
    centre = np.array([w_mm / 2, h_mm / 2, 0.0])
    diag = math.hypot(w_mm, h_mm)
    cells = [(gx, gy) for gy in (0.32, 0.5, 0.68) for gx in (0.3, 0.5, 0.7)]
    poses: list[tuple[F64, F64]] = []
    attempts = 0
    while len(poses) < cfg.views:
        attempts += 1
        if attempts > 20000:
            raise ConfigError("linesim: cannot place the board in view; use a smaller board "
                              "or a wider lens")
        gx, gy = cells[len(poses) % len(cells)]
        # distance so that the board spans ~45-65% of the image width
        span = rng.uniform(0.4, 0.6)
        z = cam.fx * diag / (span * cam.width_px * 1.2)
        rot = _rotation(rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-20, 20))
        gx, gy = gx + rng.uniform(-0.05, 0.05), gy + rng.uniform(-0.05, 0.05)
        target = np.array([(gx * cam.width_px - cam.cx) / cam.fx * z,
                           (gy * cam.height_px - cam.cy) / cam.fy * z, z])
        t = target - rot @ centre
        pts = (rot @ outline.T).T + t
        if (pts[:, 2] <= 1).any():
            continue
        px = cam.project(pts)
        if (px[:, 0] < 2).any() or (px[:, 1] < 2).any() or (px[:, 0] > cam.width_px - 3).any() \
                or (px[:, 1] > cam.height_px - 3).any():
            continue
        poses.append((rot, t))
    return poses


def write_calibration_views(out_dir: Path, cfg: ViewsConfig) -> Path:
    """Write ``view_000.png``... (board views), ``scale_board.png`` (the board flat on
    the conveyor, `conveyor_distance_mm` below the camera, axes aligned) and
    ``truth.json``; returns the path of truth.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    cam, board = cfg.camera, cfg.board
    corners_px: list[list[list[float]]] = []
    rays = undistorted_rays(cam)
    for k, (rot, t) in enumerate(_poses(cfg, rng)):
        image = render_plane(cam, board, rot, t, _background(rng, cam, 110),
                             cfg.noise_sigma, rng, rays)
        if not cv2.imwrite(str(out / f"view_{k:03d}.png"), image):
            raise OSError(f"could not write {out / f'view_{k:03d}.png'}")
        pts = (rot @ board.corners_mm().T).T + t
        corners_px.append(cam.project(pts).round(4).tolist())
    # The board on the conveyor: fronto-parallel, centred under the camera.
    w_mm, h_mm = board.size_mm
    z = cfg.conveyor_distance_mm
    t = np.array([-w_mm / 2, -h_mm / 2, z])
    image = render_plane(cam, board, np.eye(3), t, _background(rng, cam, _CONVEYOR_GREY),
                         cfg.noise_sigma, rng, rays)
    if not cv2.imwrite(str(out / "scale_board.png"), image):
        raise OSError(f"could not write {out / 'scale_board.png'}")
    truth: dict[str, object] = {
        "format": "lineguard.linesim.calibration-truth/1",
        **cam.truth(),
        # the spelling of `lineguard calibration camera --board`: inner corners for a
        # chessboard, squares for ChArUco
        "board": (f"chessboard:{board.cols}x{board.rows}" if board.kind == "chessboard"
                  else f"charuco:{board.cols + 1}x{board.rows + 1}"),
        "square_mm": board.square_mm,
        "marker_mm": board.marker_mm if board.kind == "charuco" else None,
        "aruco_dict": board.aruco_dict if board.kind == "charuco" else None,
        "mm_per_px": z / math.sqrt(cam.fx * cam.fy),
        "mm_per_px_xy": [z / cam.fx, z / cam.fy],
        "conveyor_distance_mm": z,
        "views": [f"view_{k:03d}.png" for k in range(cfg.views)],
        "corners_px": corners_px,
        "config": {"seed": cfg.seed, "noise_sigma": cfg.noise_sigma,
                   "camera": asdict(cam), "board": asdict(board)},
    }
    path = out / "truth.json"
    tmp = out / ".truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=2) + "\n")
    tmp.replace(path)
    return path
