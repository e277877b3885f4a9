"""Procedural street scenes with exact per-pixel Cityscapes trainId labels, optionally with anomalous objects.

No labelled driving images ship with any package reachable here (see ``shared/notes/data.md``), so tests, the demo
and the benchmarks use these scenes: sky, buildings with windows, vegetation (trees, hedges), terrain, a road in
perspective with lane marks (labelled road, as in Cityscapes), sidewalks, cars, poles with traffic signs and lights,
and pedestrians, drawn back to front. Image and label are drawn from the same polygons without anti-aliasing, so the
label is exact; the image then gets per-class texture and sensor noise. The same seed gives the same scene at the
same size, and any size from 32×32 up works (geometry is relative).

Anomalous objects (:data:`ANOMALY_KINDS`) are of kinds that never occur in normal scenes (crates, traffic cones,
animals, debris, balls) and are labelled with the anomaly class (trainId 19); ``anomaly_mask`` marks their visible
pixels. They stand on the road by default (like Lost&Found / SMIYC ObstacleTrack) or anywhere below the horizon.
They draw from their own random stream, so a scene with anomalies equals its anomaly-free twin (same seed)
everywhere outside ``anomaly_mask``.

Example::

    scene = generate_scene(256, 512, seed=3, num_anomalies=2)
    scene.image  # (256, 512, 3) uint8 RGB
    scene.label  # (256, 512) uint8 trainIds, 19 on the anomalies
    scene.anomaly_mask.any()  # True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from flow_anomaly_ros.segmentation.classes import ANOMALY_ID

# trainIds used by the generator
ROAD, SIDEWALK, BUILDING, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (
    0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13,
)  # fmt: skip
ANOMALY_KINDS: tuple[str, ...] = ("crate", "cone", "animal", "debris", "ball")
# Kinds that only the effect experiment's *test* scenes hold (never training, validation or the demo bag), so that
# the table measures generalisation to objects nobody tuned for. "rock" is the low-contrast one: a grey boulder
# within a few levels of the road's own grey.
HELD_OUT_KINDS: tuple[str, ...] = ("tire", "barrel", "rock")
ALL_ANOMALY_KINDS: tuple[str, ...] = ANOMALY_KINDS + HELD_OUT_KINDS
MIN_SIZE = 32

_CAR_COLORS = ((170, 20, 25), (25, 45, 120), (215, 215, 220), (25, 25, 28), (140, 142, 148), (60, 90, 60))
_BUILDING_COLORS = ((150, 120, 95), (185, 170, 140), (120, 115, 110), (160, 90, 70), (200, 195, 185))
_CLOTHES = ((30, 30, 90), (120, 20, 20), (40, 40, 40), (200, 180, 120), (70, 100, 60), (230, 230, 230))


@dataclass
class StreetScene:
    """One generated scene: RGB image, trainId label (19 = anomaly) and the anomaly mask."""

    image: np.ndarray
    label: np.ndarray
    anomaly_mask: np.ndarray
    anomaly_kinds: list[str] = field(default_factory=list)
    seed: int | None = None


class _Canvas:
    """Draws every shape into the image and the label at once, so the label is exact."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.img = Image.new("RGB", (width, height))
        self.lbl = Image.new("L", (width, height))
        self.di, self.dl = ImageDraw.Draw(self.img), ImageDraw.Draw(self.lbl)

    def polygon(self, pts: Sequence[tuple[float, float]], color: Sequence[int], label: int) -> None:
        self.di.polygon(list(pts), fill=tuple(int(c) for c in color))
        self.dl.polygon(list(pts), fill=label)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int], label: int) -> None:
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        self.di.rectangle(box, fill=tuple(int(c) for c in color))
        self.dl.rectangle(box, fill=label)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int], label: int) -> None:
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        self.di.ellipse(box, fill=tuple(int(c) for c in color))
        self.dl.ellipse(box, fill=label)

    def paint(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int]) -> None:
        """Image-only detail (windows, lane paint, stripes): the label keeps the class underneath."""
        self.di.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=tuple(int(c) for c in color))

    def paint_polygon(self, pts: Sequence[tuple[float, float]], color: Sequence[int]) -> None:
        self.di.polygon(list(pts), fill=tuple(int(c) for c in color))


def _jitter(rng: np.random.Generator, color: Sequence[int], amount: int = 15) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


class _Scene:
    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.c = _Canvas(height, width)
        self.h, self.w, self.rng = height, width, rng
        self.horizon = height * rng.uniform(0.36, 0.48)
        self.vx = width * rng.uniform(0.4, 0.6)
        self.road_left = width * rng.uniform(-0.35, 0.05)
        self.road_right = width * rng.uniform(0.95, 1.35)
        self.walk = width * rng.uniform(0.2, 0.45)

    # geometry helpers -------------------------------------------------------------------------------------------
    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom edge: the scale of an object standing at image row ``y``."""
        return max(0.0, (y - self.horizon) / (self.h - self.horizon))

    def road_x(self, y: float, side: float) -> float:
        """x of a line that converges to the vanishing point; side 0 = left road edge, 1 = right edge."""
        d = self.depth(y)
        bottom = self.road_left + side * (self.road_right - self.road_left)
        return self.vx + (bottom - self.vx) * d

    # layers -----------------------------------------------------------------------------------------------------
    def background(self) -> None:
        c, h, w, rng = self.c, self.h, self.w, self.rng
        c.rect(0, 0, w, self.horizon + 1, (120, 170, 215), SKY)
        ground = TERRAIN if rng.random() < 0.5 else VEGETATION
        c.rect(0, self.horizon, w, h, _jitter(rng, (110, 125, 60) if ground == TERRAIN else (60, 110, 45)), ground)
        x = -rng.uniform(0, 0.1) * w
        while x < w:
            bw = w * rng.uniform(0.08, 0.22)
            top = h * rng.uniform(0.02, 0.3)
            bottom = self.horizon + h * rng.uniform(0.0, 0.04)
            if rng.random() < 0.18:  # a gap with a big tree instead of a building
                c.ellipse(x, top + h * 0.05, x + bw, bottom + h * 0.03, _jitter(rng, (55, 95, 40), 20), VEGETATION)
            else:
                color = _jitter(rng, _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))])
                c.rect(x, top, x + bw, bottom, color, BUILDING)
                self.windows(x, top, x + bw, bottom, color)
            x += bw
        if rng.random() < 0.6:  # a hedge along the horizon
            c.rect(0, self.horizon - h * 0.03, w, self.horizon + h * 0.01, _jitter(rng, (50, 90, 35)), VEGETATION)

    def windows(self, x0: float, y0: float, x1: float, y1: float, wall: Sequence[int]) -> None:
        rows = max(1, int((y1 - y0) / max(6.0, self.h * 0.05)))
        cols = max(1, int((x1 - x0) / max(6.0, self.w * 0.025)))
        glass = (60, 70, 85) if sum(wall) > 400 else (200, 210, 220)
        for r in range(rows):
            for q in range(cols):
                cx0 = x0 + (q + 0.25) * (x1 - x0) / cols
                cy0 = y0 + (r + 0.25) * (y1 - y0) / rows
                self.c.paint(cx0, cy0, cx0 + 0.5 * (x1 - x0) / cols, cy0 + 0.45 * (y1 - y0) / rows, glass)

    def ground(self) -> None:
        c, h, rng = self.c, self.h, self.rng
        hz = self.horizon
        walk_color = _jitter(rng, (175, 160, 165))
        c.polygon([(self.vx, hz), (self.road_left - self.walk, h), (self.road_left, h)], walk_color, SIDEWALK)
        c.polygon([(self.vx, hz), (self.road_right, h), (self.road_right + self.walk, h)], walk_color, SIDEWALK)
        grey = int(rng.integers(80, 115))
        self.road_grey = (grey, grey, grey + 5)
        c.polygon([(self.vx, hz), (self.road_left, h), (self.road_right, h)], self.road_grey, ROAD)
        # dashed centre line and solid edge lines (paint on the road: still labelled road, as in Cityscapes)
        paint = (235, 235, 225)
        side = rng.uniform(0.45, 0.55)
        n_dash = 12
        for i in range(n_dash):
            y0 = hz + (h - hz) * (i / n_dash) ** 1.6
            y1 = hz + (h - hz) * ((i + 0.5) / n_dash) ** 1.6
            self._line(y0, y1, side, 0.012, paint)
        for edge in (0.04, 0.96):
            self._line(hz + (h - hz) * 0.05, h, edge, 0.008, paint)

    def _line(self, y0: float, y1: float, side: float, half_width: float, color: Sequence[int]) -> None:
        def x(y: float, s: float) -> float:
            return self.road_x(y, s)

        self.c.paint_polygon(
            [(x(y0, side - half_width), y0), (x(y0, side + half_width), y0),
             (x(y1, side + half_width), y1), (x(y1, side - half_width), y1)],
            color,
        )  # fmt: skip

    # objects ----------------------------------------------------------------------------------------------------
    def car(self, y: float, side: float) -> None:
        c, rng = self.c, self.rng
        s = self.depth(y)
        width = (self.road_right - self.road_left) * 0.28 * s
        height = width * rng.uniform(0.55, 0.75)
        cx = self.road_x(y, side)
        x0, x1 = cx - width / 2, cx + width / 2
        color = _jitter(rng, _CAR_COLORS[rng.integers(len(_CAR_COLORS))])
        c.rect(x0, y - height * 0.6, x1, y - height * 0.12, color, CAR)
        c.polygon([(x0 + width * 0.15, y - height * 0.6), (x0 + width * 0.25, y - height),
                   (x1 - width * 0.25, y - height), (x1 - width * 0.15, y - height * 0.6)], color, CAR)  # fmt: skip
        c.paint(x0 + width * 0.27, y - height * 0.93, x1 - width * 0.27, y - height * 0.65, (40, 50, 60))  # window
        for wx in (x0 + width * 0.08, x1 - width * 0.3):
            c.rect(wx, y - height * 0.25, wx + width * 0.22, y, (20, 20, 20), CAR)
        c.paint(x0 + width * 0.03, y - height * 0.5, x0 + width * 0.12, y - height * 0.4, (230, 60, 40))  # lights
        c.paint(x1 - width * 0.12, y - height * 0.5, x1 - width * 0.03, y - height * 0.4, (230, 60, 40))

    def pole(self, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        pw = max(1.0, self.w * 0.006 * s)
        top = y - self.h * 0.75 * s
        c.rect(x - pw, top, x + pw, y, _jitter(rng, (120, 120, 125), 10), POLE)
        r = self.h * 0.04 * s
        if rng.random() < 0.5:
            c.polygon([(x, top - r * 2), (x - r * 1.1, top), (x + r * 1.1, top)], (230, 200, 30), SIGN)
        elif rng.random() < 0.5:
            c.rect(x - r * 1.2, top - r * 2, x + r * 1.2, top, (30, 80, 180), SIGN)
        else:
            c.rect(x - r * 0.6, top - r * 2.6, x + r * 0.6, top, (30, 30, 30), LIGHT)
            lamp = [(200, 30, 30), (230, 170, 20), (40, 200, 60)][rng.integers(3)]
            c.paint(x - r * 0.4, top - r * 2.2, x + r * 0.4, top - r * 1.6, lamp)

    def tree(self, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        tw = max(1.0, self.w * 0.01 * s)
        crown = self.h * rng.uniform(0.2, 0.35) * s
        c.rect(x - tw, y - crown * 1.6, x + tw, y, _jitter(rng, (90, 65, 40)), VEGETATION)
        c.ellipse(x - crown * 0.7, y - crown * 2.6, x + crown * 0.7, y - crown * 1.2, _jitter(rng, (50, 100, 40), 20),
                  VEGETATION)  # fmt: skip

    def person(self, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, self.depth(y)
        ph = self.h * 0.4 * s
        pw = ph * 0.28
        clothes = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))])
        c.rect(x - pw * 0.35, y - ph * 0.45, x - pw * 0.05, y, _jitter(rng, (40, 40, 60)), PERSON)  # legs
        c.rect(x + pw * 0.05, y - ph * 0.45, x + pw * 0.35, y, _jitter(rng, (40, 40, 60)), PERSON)
        c.ellipse(x - pw / 2, y - ph * 0.85, x + pw / 2, y - ph * 0.4, clothes, PERSON)  # torso
        c.ellipse(x - pw * 0.22, y - ph, x + pw * 0.22, y - ph * 0.82, _jitter(rng, (200, 160, 130), 30), PERSON)

    def anomaly(self, kind: str, y: float, x: float) -> None:
        c, rng, s = self.c, self.rng, max(self.depth(y), 0.15)
        size = (self.road_right - self.road_left) * rng.uniform(0.06, 0.16) * s
        a = ANOMALY_ID
        if kind == "crate":
            c.rect(x - size / 2, y - size * 0.8, x + size / 2, y, _jitter(rng, (160, 110, 50)), a)
            for k in range(1, 4):
                yy = y - size * 0.8 * k / 4
                c.paint(x - size / 2, yy - max(1, size * 0.02), x + size / 2, yy + max(1, size * 0.02), (90, 60, 25))
        elif kind == "cone":
            c.polygon([(x, y - size * 1.2), (x - size * 0.35, y), (x + size * 0.35, y)], (250, 110, 20), a)
            c.paint(x - size * 0.2, y - size * 0.6, x + size * 0.2, y - size * 0.45, (250, 250, 250))
        elif kind == "animal":
            fur = _jitter(rng, [(120, 80, 50), (230, 225, 210), (60, 50, 40)][rng.integers(3)], 10)
            c.ellipse(x - size, y - size * 0.9, x + size * 0.6, y - size * 0.35, fur, a)  # body
            c.ellipse(x + size * 0.4, y - size * 1.2, x + size, y - size * 0.7, fur, a)  # head
            for lx in (-0.8, -0.5, 0.1, 0.35):
                c.rect(x + lx * size, y - size * 0.5, x + (lx + 0.12) * size, y, fur, a)
            c.paint(x - size * 0.4, y - size * 0.8, x - size * 0.05, y - size * 0.55, (250, 250, 245))  # patch
        elif kind == "debris":
            n = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.3, 0.7, n)
            pts = [(x + r * np.cos(t), y - size * 0.4 + 0.6 * r * np.sin(t)) for r, t in zip(rad, ang)]
            c.polygon(pts, tuple(int(v) for v in rng.integers(0, 256, 3)), a)
        elif kind == "ball":
            col = [(230, 30, 200), (30, 220, 230), (250, 240, 30)][rng.integers(3)]
            c.ellipse(x - size / 2, y - size, x + size / 2, y, col, a)
            c.paint(x - size / 2, y - size * 0.55, x + size / 2, y - size * 0.45, (255, 255, 255))
        elif kind == "tire":  # a lost tyre lying flat: dark rubber ring around a road-coloured hole
            c.ellipse(x - size * 0.6, y - size * 0.45, x + size * 0.6, y, _jitter(rng, (28, 28, 30), 6), a)
            c.paint_polygon(_ellipse_points(x, y - size * 0.225, size * 0.28, size * 0.1), self.road_grey)
        elif kind == "barrel":  # an oil drum standing upright, with two rims
            col = [(30, 70, 160), (150, 40, 30), (40, 110, 50)][rng.integers(3)]
            c.rect(x - size * 0.3, y - size * 0.9, x + size * 0.3, y, _jitter(rng, col, 12), a)
            for yy in (0.3, 0.6):
                c.paint(x - size * 0.3, y - size * yy - 1, x + size * 0.3, y - size * yy + 1, (200, 200, 200))
        elif kind == "rock":  # low contrast: within a few grey levels of the road under it
            g = self.road_grey
            shade = tuple(int(np.clip(v + rng.integers(-14, 15), 0, 255)) for v in g)
            n = int(rng.integers(6, 10))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.35, 0.55, n)
            pts = [(x + r * np.cos(t), y - size * 0.3 + 0.55 * r * np.sin(t)) for r, t in zip(rad, ang)]
            c.polygon(pts, shade, a)
        else:
            raise ValueError(f"unknown anomaly kind {kind!r}; choose from {ALL_ANOMALY_KINDS}")

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(self.c.img, dtype=np.int16)
        label = np.asarray(self.c.lbl, dtype=np.uint8).copy()
        # sky gradient, per-class texture and sensor noise (image only)
        rows = np.linspace(-25, 25, self.h, dtype=np.float32)[:, None]
        noise = self.rng.normal(0.0, 6.0, size=(self.h, self.w, 1)).astype(np.float32)
        img = image.astype(np.float32) + noise
        sky = label == SKY
        img[sky] += rows.repeat(self.w, axis=1)[sky][:, None] * np.array([1.0, 0.6, 0.2], np.float32)
        coarse = self.rng.normal(0.0, 10.0, size=(max(1, self.h // 8), max(1, self.w // 8), 1)).astype(np.float32)
        coarse = np.kron(coarse, np.ones((8, 8, 1), np.float32))[: self.h, : self.w]
        if coarse.shape[:2] != (self.h, self.w):
            coarse = np.pad(coarse, ((0, self.h - coarse.shape[0]), (0, self.w - coarse.shape[1]), (0, 0)), "edge")
        textured = np.isin(label, (VEGETATION, TERRAIN, ROAD, SIDEWALK))[..., None]
        img += coarse * textured
        return np.clip(img, 0, 255).astype(np.uint8), label


def generate_scene(
    height: int = 256,
    width: int = 512,
    seed: int | np.random.Generator | None = 0,
    num_anomalies: int = 0,
    anomaly_kinds: Sequence[str] = ANOMALY_KINDS,
    anomalies_on_road: bool = True,
) -> StreetScene:
    """Generate one street scene of ``height x width``; ``num_anomalies`` objects of ``anomaly_kinds`` on top."""
    if int(height) < MIN_SIZE or int(width) < MIN_SIZE:
        raise ValueError(f"scene size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
    if num_anomalies < 0:
        raise ValueError(f"num_anomalies must be >= 0, got {num_anomalies}")
    bad = [k for k in anomaly_kinds if k not in ALL_ANOMALY_KINDS]
    if bad or (num_anomalies and not anomaly_kinds):
        raise ValueError(f"anomaly_kinds must be a non-empty subset of {ALL_ANOMALY_KINDS}, got {list(anomaly_kinds)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # anomalies draw from their own stream, so a scene with anomalies is its normal twin plus the objects
    anomaly_rng = np.random.default_rng(int(rng.integers(2**62)))
    sc = _Scene(int(height), int(width), rng)
    sc.background()
    sc.ground()
    h, hz = sc.h, sc.horizon
    objects: list[tuple[float, str, float]] = []  # (ground row, kind, x or road side)
    for _ in range(int(rng.integers(1, 5))):
        objects.append((hz + (h - hz) * rng.uniform(0.15, 1.0) ** 0.7, "car", rng.uniform(0.2, 0.8)))
    for _ in range(int(rng.integers(1, 4))):
        objects.append((hz + (h - hz) * rng.uniform(0.1, 0.9), "pole", rng.uniform(-1.0, -0.2)))
        objects.append((hz + (h - hz) * rng.uniform(0.1, 0.9), "pole", rng.uniform(1.2, 2.0)))
    for _ in range(int(rng.integers(0, 3))):
        objects.append((hz + (h - hz) * rng.uniform(0.1, 0.8), "tree", rng.choice([-0.8, 1.8])))
    for _ in range(int(rng.integers(0, 4))):
        objects.append((hz + (h - hz) * rng.uniform(0.1, 1.0), "person", rng.choice([-0.5, 1.5]) + rng.normal(0, 0.1)))
    kinds: list[str] = []
    for _ in range(int(num_anomalies)):
        kind = str(anomaly_rng.choice(list(anomaly_kinds)))
        kinds.append(kind)
        side = anomaly_rng.uniform(0.15, 0.85) if anomalies_on_road else anomaly_rng.uniform(-0.8, 1.8)
        objects.append((hz + (h - hz) * anomaly_rng.uniform(0.25, 0.95), "anomaly:" + kind, side))
    for y, kind, pos in sorted(objects, key=lambda o: o[0]):  # far to near
        if kind == "car":
            sc.car(y, pos)
        elif kind.startswith("anomaly:"):
            sc.rng = anomaly_rng
            sc.anomaly(kind.split(":", 1)[1], y, sc.road_x(y, pos))
            sc.rng = rng
        else:
            getattr(sc, kind)(y, sc.road_x(y, pos))
    image, label = sc.finish()
    return StreetScene(image, label, label == ANOMALY_ID, kinds, seed if isinstance(seed, int) else None)


def scene_seed(base_seed: int, index: int) -> int:
    """Seed of scene ``index`` in a data set with ``base_seed`` (independent of order, worker and rank)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


class StreetSceneDataset:
    """A fixed, indexable set of ``length`` scenes; scene ``i`` is always the same (seeded by ``(seed, i)``).

    ``anomaly_fraction`` of the scenes (chosen by index) hold 1..``max_anomalies`` anomalous objects.
    Items are :class:`StreetScene`; works as a torch ``Dataset`` (``__len__``/``__getitem__``) without torch.
    """

    def __init__(
        self,
        length: int,
        height: int = 256,
        width: int = 512,
        seed: int = 0,
        anomaly_fraction: float = 0.0,
        max_anomalies: int = 2,
        anomaly_kinds: Sequence[str] = ANOMALY_KINDS,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0.0 <= anomaly_fraction <= 1.0:
            raise ValueError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
        self.length, self.height, self.width, self.seed = int(length), int(height), int(width), int(seed)
        self.anomaly_fraction, self.max_anomalies, self.anomaly_kinds = anomaly_fraction, max_anomalies, anomaly_kinds

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> StreetScene:
        if not -self.length <= index < self.length:
            raise IndexError(f"scene index {index} out of range for {self.length} scenes")
        index %= self.length
        rng = np.random.default_rng(scene_seed(self.seed, index))
        n = int(rng.integers(1, self.max_anomalies + 1)) if rng.random() < self.anomaly_fraction else 0
        return generate_scene(self.height, self.width, rng, num_anomalies=n, anomaly_kinds=self.anomaly_kinds)

    def __iter__(self) -> Iterator[StreetScene]:
        for i in range(self.length):
            yield self[i]
